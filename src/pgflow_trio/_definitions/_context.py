"""The task context a handler may ask for with a parameter annotated `Context` (or `Context[In]`)."""

from __future__ import annotations

import uuid
from typing import Any, Generic

import attrs
from typing_extensions import TypeVar

FlowIn = TypeVar("FlowIn", default=Any)


@attrs.frozen
class Context(Generic[FlowIn]):
    """Where a handler runs: the run, the step and task, the attempt (1-based), the flow input and the worker.

    `Context[In]` types `flow_input` as the flow's input type `In`: typed flows receive it structured into that type.
    A bare `Context` is `Context[Any]`; runtime (untyped) flows receive the flow input as plain JSON.
    """

    run_id: uuid.UUID
    flow_slug: str
    step_slug: str
    task_index: int
    attempt: int
    flow_input: FlowIn
    worker_id: uuid.UUID
    msg_id: int = 0
