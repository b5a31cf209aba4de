"""Run the pgflow_trio command line: `python -m pgflow_trio --help`."""

import sys

from pgflow_trio._cli._commands import main

sys.exit(main())
