"""Run the pgflow_trio command line: `python -m pgflow_trio --help`."""

import sys

from ._cli import main

sys.exit(main())
