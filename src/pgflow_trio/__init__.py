"""pgflow_trio: durable DAG workflows, background jobs and cron on PostgreSQL, Trio-native, pgflow 0.8.1 compatible."""

from ._admin import check_schema as check_schema
from ._admin import install_schema as install_schema
from ._errors import ConfigurationError as ConfigurationError
from ._errors import ConnectionLost as ConnectionLost
from ._errors import DatabaseError as DatabaseError
from ._errors import IntegrityError as IntegrityError
from ._errors import PgflowError as PgflowError
from ._errors import SchemaError as SchemaError
from ._schema import CORE_VERSION as CORE_VERSION
from ._schema import InstallReport as InstallReport
from ._schema import SchemaStatus as SchemaStatus

__version__ = "0.1.0"
