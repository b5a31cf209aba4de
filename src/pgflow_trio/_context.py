"""The task context a handler may ask for with a parameter annotated `Context`."""

from __future__ import annotations

import uuid
from typing import Any

import attrs


@attrs.frozen
class Context:
    """Where a handler runs: the run, the step and task, the attempt (1-based), the flow input and the worker."""

    run_id: uuid.UUID
    flow_slug: str
    step_slug: str
    task_index: int
    attempt: int
    flow_input: Any
    worker_id: uuid.UUID
    msg_id: int = 0
