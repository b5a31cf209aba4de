"""pgflow_trio: durable DAG workflows, background jobs and cron on PostgreSQL, Trio-native, pgflow 0.8.1 compatible."""

from pgflow_trio._client._admin import check_schema as check_schema
from pgflow_trio._client._admin import install_schema as install_schema
from pgflow_trio._client._engine import Engine as Engine
from pgflow_trio._client._engine import EngineOptions as EngineOptions
from pgflow_trio._client._engine import EngineTransaction as EngineTransaction
from pgflow_trio._client._engine import RunHandle as RunHandle
from pgflow_trio._client._engine import open_engine as open_engine
from pgflow_trio._definitions._compile import compile_flow as compile_flow
from pgflow_trio._definitions._context import Context as Context
from pgflow_trio._definitions._flow import Definition as Definition
from pgflow_trio._definitions._flow import Flow as Flow
from pgflow_trio._definitions._flow import Job as Job
from pgflow_trio._definitions._flow import definition_of as definition_of
from pgflow_trio._definitions._flow import map_step as map_step
from pgflow_trio._definitions._flow import needs as needs
from pgflow_trio._definitions._flow import needs_all as needs_all
from pgflow_trio._definitions._flow import needs_input as needs_input
from pgflow_trio._definitions._flow import step as step
from pgflow_trio._definitions._model import FlowDef as FlowDef
from pgflow_trio._definitions._model import Options as Options
from pgflow_trio._definitions._model import StepDef as StepDef
from pgflow_trio._definitions._schedule import Schedule as Schedule
from pgflow_trio._definitions._spec import flow_from_spec as flow_from_spec
from pgflow_trio._definitions._spec import spec_of as spec_of
from pgflow_trio._exceptions import ConfigurationError as ConfigurationError
from pgflow_trio._exceptions import ConnectionLost as ConnectionLost
from pgflow_trio._exceptions import DatabaseError as DatabaseError
from pgflow_trio._exceptions import DefinitionError as DefinitionError
from pgflow_trio._exceptions import FlowChanged as FlowChanged
from pgflow_trio._exceptions import FlowInUse as FlowInUse
from pgflow_trio._exceptions import FlowMismatch as FlowMismatch
from pgflow_trio._exceptions import FlowNotFound as FlowNotFound
from pgflow_trio._exceptions import IntegrityError as IntegrityError
from pgflow_trio._exceptions import PgflowError as PgflowError
from pgflow_trio._exceptions import RunCancelled as RunCancelled
from pgflow_trio._exceptions import RunFailed as RunFailed
from pgflow_trio._exceptions import RunNotActive as RunNotActive
from pgflow_trio._exceptions import RunNotFound as RunNotFound
from pgflow_trio._exceptions import RunNotRetryable as RunNotRetryable
from pgflow_trio._exceptions import RunTimeout as RunTimeout
from pgflow_trio._exceptions import ScheduleNotFound as ScheduleNotFound
from pgflow_trio._exceptions import SchemaError as SchemaError
from pgflow_trio._exceptions import SerializationError as SerializationError
from pgflow_trio._exceptions import TaskInputError as TaskInputError
from pgflow_trio._models import JSON as JSON
from pgflow_trio._models import BulkOutcome as BulkOutcome
from pgflow_trio._models import Cancellation as Cancellation
from pgflow_trio._models import FlowInfo as FlowInfo
from pgflow_trio._models import Health as Health
from pgflow_trio._models import InstallReport as InstallReport
from pgflow_trio._models import JSONInput as JSONInput
from pgflow_trio._models import PruneReport as PruneReport
from pgflow_trio._models import PruneStatus as PruneStatus
from pgflow_trio._models import QueueHealth as QueueHealth
from pgflow_trio._models import QueuePause as QueuePause
from pgflow_trio._models import Run as Run
from pgflow_trio._models import RunEvent as RunEvent
from pgflow_trio._models import RunPage as RunPage
from pgflow_trio._models import RunState as RunState
from pgflow_trio._models import SchemaStatus as SchemaStatus
from pgflow_trio._models import Snapshot as Snapshot
from pgflow_trio._models import StepEvent as StepEvent
from pgflow_trio._models import StepState as StepState
from pgflow_trio._runtime import ServeTarget as ServeTarget
from pgflow_trio._runtime import WorkerGroup as WorkerGroup
from pgflow_trio._runtime import WorkerOptions as WorkerOptions
from pgflow_trio._runtime import serve as serve
from pgflow_trio._runtime._inline import run_inline as run_inline
from pgflow_trio._store._schema import CORE_VERSION as CORE_VERSION

__version__ = "0.1.0"


def _fixup_module_metadata() -> None:
    """Public classes and functions report `pgflow_trio` as their module (as trio's do), so tracebacks, reprs and docs
    show the public path (`pgflow_trio.RunFailed`, not a private module). The field types of attrs classes are
    resolved first, while their defining module is still known, so attrs and cattrs keep working on them."""
    import inspect

    import attrs

    for name, obj in list(globals().items()):
        if name.startswith("_") or not str(getattr(obj, "__module__", "")).startswith("pgflow_trio._"):
            continue
        if isinstance(obj, type) and attrs.has(obj):
            attrs.resolve_types(obj)
        if inspect.isfunction(obj) or isinstance(obj, type):
            obj.__module__ = "pgflow_trio"


_fixup_module_metadata()
