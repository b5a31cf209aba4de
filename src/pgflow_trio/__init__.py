"""pgflow_trio: durable DAG workflows, background jobs and cron on PostgreSQL, Trio-native, pgflow 0.8.1 compatible."""

from ._admin import check_schema as check_schema
from ._admin import install_schema as install_schema
from ._compile import compile_flow as compile_flow
from ._context import Context as Context
from ._definition import DefinitionError as DefinitionError
from ._definition import FlowDef as FlowDef
from ._definition import Options as Options
from ._definition import StepDef as StepDef
from ._errors import ConfigurationError as ConfigurationError
from ._errors import ConnectionLost as ConnectionLost
from ._errors import DatabaseError as DatabaseError
from ._errors import IntegrityError as IntegrityError
from ._errors import PgflowError as PgflowError
from ._errors import SchemaError as SchemaError
from ._flow import Definition as Definition
from ._flow import Flow as Flow
from ._flow import Job as Job
from ._flow import definition_of as definition_of
from ._flow import map_step as map_step
from ._flow import needs as needs
from ._flow import needs_all as needs_all
from ._flow import step as step
from ._inline import run_inline as run_inline
from ._schema import CORE_VERSION as CORE_VERSION
from ._schema import InstallReport as InstallReport
from ._schema import SchemaStatus as SchemaStatus
from ._serde import SerializationError as SerializationError
from ._spec import flow_from_spec as flow_from_spec
from ._spec import spec_of as spec_of

__version__ = "0.1.0"
