"""One worker serving one flow or job (its queue is the flow slug), speaking pgflow core 0.8.1's worker protocol.

register -> (heartbeat | recover | extend visibility | read -> start_tasks -> run handler -> complete/fail).
Each task runs in its own cancel scope whose deadline is the step's timeout. Stopping stops the reader, gives
running tasks `shutdown_grace` seconds, then cancels them and hands them back without using up an attempt.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, TypeAlias

import attrs
import trio

from pgflow_trio._codec import encode
from pgflow_trio._definitions._context import Context
from pgflow_trio._definitions._flow import Definition, definition_of
from pgflow_trio._definitions._model import FlowDef
from pgflow_trio._exceptions import (
    ConfigurationError,
    ConnectionLost,
    DatabaseError,
    DefinitionError,
    PgflowError,
    TaskInputError,
)
from pgflow_trio._observe._events import (
    Event,
    PollStart,
    PollStop,
    RunComplete,
    RunFail,
    TaskCancel,
    TaskException,
    TaskRecover,
    TaskRelease,
    TaskStart,
    TaskStop,
    TaskTimeout,
    WorkerStart,
    WorkerStop,
    emit,
    wanted,
)
from pgflow_trio._observe._hooks import fetch_trace_contexts, task_span
from pgflow_trio._observe._logging import log_failure, task_fields, worker_fields
from pgflow_trio._runtime._completer import Completer, emit_ended
from pgflow_trio._runtime._execute import call_handler, instantiate
from pgflow_trio._runtime._options import WorkerOptions
from pgflow_trio._store import Database, MissedNotifications, Notification, open_listener
from pgflow_trio._store._lifecycle import recover_observed
from pgflow_trio._store._pauses import PausableRead, read_and_claim_unless_paused
from pgflow_trio._store._registry import ensure_flow
from pgflow_trio._store._worker_queries import (
    ClaimedTask,
    attempt_ended,
    fail,
    fail_permanently,
    release,
    wake_channel,
)
from pgflow_trio._store._workers import (
    deregister_worker,
    enable_queue_notifications,
    ended_runs,
    extend_visibility,
    heartbeat,
    liveness_bound,
    register_worker,
)

log = logging.getLogger("pgflow_trio.worker")

RawHandler = Callable[[Any, Context], Awaitable[Any]]
"""A runtime flow's step handler: gets the raw task input (as pgflow builds it) and the context."""

_ERROR_LIMIT = 2000
_CANCEL_PREFIX = "cancel:"  # payload on the queue's wake channel when a run of it is cancelled

_Report = Literal["complete", "fail", "fail_permanently"]
_SQL_NAMES = {"complete": "complete_task", "fail": "fail_task", "fail_permanently": "fail_task_permanently"}


@attrs.frozen
class Served:
    """What a worker serves: a typed flow/job (with the object its steps are called on) or a runtime flow."""

    flow: FlowDef
    instance: object | None = None
    handlers: Mapping[str, RawHandler] | None = None

    def context(self, task: ClaimedTask, worker_id: uuid.UUID) -> Context:
        """The Context a handler of `task` receives (with the raw flow input; typed handlers get it structured)."""
        return Context(
            run_id=task.run_id,
            flow_slug=self.flow.slug,
            step_slug=task.step_slug,
            task_index=task.task_index,
            attempt=task.attempt,
            flow_input=task.flow_input,
            worker_id=worker_id,
            msg_id=task.msg_id,
        )

    async def invoke(self, task: ClaimedTask, ctx: Context) -> str:
        """Run the task's handler; its output as the JSON text for complete_task (encoded once). Runtime flows'
        handlers get pgflow's task input; typed ones raise TaskInputError when that input does not fit."""
        if self.handlers is not None:
            result = await self.handlers[task.step_slug](task.input, ctx)
            return encode(result, what=f"output of step {self.flow.slug}.{task.step_slug}")
        return await call_handler(self.flow, self.flow.step(task.step_slug), self.instance, task.input, ctx)


ServeTarget: TypeAlias = (
    type[Definition[Any, Any]] | Definition[Any, Any] | Served | tuple[FlowDef, Mapping[str, RawHandler]]
)
"""What a worker can serve: a flow or job class (instantiated without arguments) or instance, a `Served`, or a
runtime flow with its handlers, `(FlowDef, {step_slug: handler})`."""


def served(target: ServeTarget) -> Served:
    """Accept a flow/job class or instance, a `Served`, or `(FlowDef, {step_slug: handler})` for runtime flows."""
    if isinstance(target, Served):
        return target
    if isinstance(target, tuple) and len(target) == 2 and isinstance(target[0], FlowDef):
        flow, handlers = target
        missing = [s.slug for s in flow.steps if s.slug not in handlers]
        if missing:
            raise DefinitionError(f"runtime flow {flow.slug!r}: no handler for steps {', '.join(missing)}")
        return Served(flow, handlers=dict(handlers))
    flow = definition_of(target)
    if not flow.typed:
        raise DefinitionError(f"flow {flow.slug!r} has no handlers: pass (flow, {{step_slug: handler}})")
    return Served(flow, instance=instantiate(flow, target))


@attrs.define
class _Running:
    task: ClaimedTask
    visible_until: float  # trio clock time when the message's visibility runs out
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)  # cancelled when the task's run ends under it
    began: float = 0.0  # trio clock time when its handler was called
    queue_wait: float = 0.0  # seconds from its message's enqueue time to the handler's call


@attrs.define
class WorkerStats:
    started: int = 0
    completed: int = 0
    failed: int = 0
    timed_out: int = 0
    released: int = 0
    recovered: int = 0
    reads: int = 0
    cancelled: int = 0  # handlers cancelled because their run was cancelled or failed while they ran


class Worker:
    """Runs one flow's tasks. Start it with `await nursery.start(worker.run)`; `stop()` drains it."""

    def __init__(self, db: Database, target: ServeTarget, options: WorkerOptions | None = None) -> None:
        self.served = served(target)
        self.flow = self.served.flow
        self.options = options or WorkerOptions()
        self.db = db
        self.worker_id = uuid.uuid4()
        self.function_name = f"pgflow_trio:{self.flow.slug}"
        self.stats = WorkerStats()
        self._running: dict[int, _Running] = {}  # by the claimed message: a retried task gets a new one
        self._capacity_changed = trio.Event()
        self._wake = trio.Event()
        self._idle = trio.Event()
        self._intake = trio.CancelScope()
        self._stopping = False
        self._timeouts: dict[str, int] = {}
        self._fields = worker_fields(self.worker_id, self.flow.slug)
        self._completer = Completer(db, fields=self._fields)
        self._served_since: float | None = None  # trio clock time of worker.start

    # ---- control -------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop reading; running tasks get `shutdown_grace` seconds, then are cancelled and handed back."""
        if not self._stopping:
            log.info("worker %s (%s): stopping", self.worker_id, self.flow.slug, extra=self._fields)
        self._stopping = True
        self._intake.cancel()

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def running(self) -> int:
        return len(self._running)

    # ---- lifecycle -----------------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[Worker] = trio.TASK_STATUS_IGNORED) -> None:
        """Register, then serve until stopped or cancelled. `task_status.started(self)` once reading."""
        await self._check_liveness_bound()
        if self.options.register_flow and await ensure_flow(self.db, self.flow):
            log.info("created flow %s in the database", self.flow.slug, extra=self._fields)
        await self._register()
        signal = self.options.signal
        if signal == "notify" and not await self._enable_notify():
            signal = "poll"
        try:
            async with trio.open_nursery() as services:
                services.start_soon(self._heartbeat_loop)
                services.start_soon(self._recovery_loop)
                services.start_soon(self._extend_loop)
                services.start_soon(self._run_check_loop)
                services.start_soon(self._completer.run)
                if signal == "notify":
                    await services.start(self._notify_loop)
                async with trio.open_nursery() as tasks:
                    log.info(
                        "worker %s serving %s (signal=%s, concurrency=%d)",
                        self.worker_id,
                        self.flow.slug,
                        signal,
                        self.options.concurrency,
                        extra=self._fields,
                    )
                    self._served_since = trio.current_time()
                    if wanted(WorkerStart):
                        emit(self._worker_start(signal))
                    task_status.started(self)
                    await self._read_loop(tasks, signal)
                    await self._drain(tasks)
                services.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._deregister()
            if self._served_since is not None and wanted(WorkerStop):
                emit(self._worker_stop())
        log.info("worker %s (%s) stopped: %s", self.worker_id, self.flow.slug, self.stats, extra=self._fields)

    def _worker_start(self, signal: str) -> WorkerStart:
        return WorkerStart(
            at=time.time(),
            worker_id=self.worker_id,
            flow_slug=self.flow.slug,
            concurrency=self.options.concurrency,
            signal=signal,
        )

    def _worker_stop(self) -> WorkerStop:
        served = trio.current_time() - (self._served_since or 0.0)
        return WorkerStop(at=time.time(), worker_id=self.worker_id, flow_slug=self.flow.slug, duration=served)

    async def _check_liveness_bound(self) -> None:
        """A worker counts as live for its flow's schedules while it heartbeats within
        `pgflow_trio.live_worker_seconds` (60 s unless set): refuse a heartbeat interval above half of that, so
        that one late or lost heartbeat does not make the schedules skip ticks."""
        liveness = await self.db.run(liveness_bound)
        bound = liveness.seconds
        setting = liveness.setting
        if setting and setting.strip() and _seconds(setting) != bound:
            log.warning(
                "pgflow_trio.live_worker_seconds = %r is not a positive number of seconds; %g s apply",
                setting,
                bound,
                extra=self._fields,
            )
        if self.options.heartbeat_interval > bound / 2:
            raise ConfigurationError(
                f"worker option heartbeat_interval ({self.options.heartbeat_interval:g} s) must be at most half of "
                f"pgflow_trio.live_worker_seconds ({bound:g} s), the silence after which a worker no longer counts "
                f"as serving its flow's schedules: lower heartbeat_interval (--heartbeat-interval, "
                f"PGFLOW_HEARTBEAT_INTERVAL), or raise the setting (ALTER DATABASE ... SET "
                f"pgflow_trio.live_worker_seconds = '{math.ceil(self.options.heartbeat_interval * 2)}')"
            )

    async def _register(self) -> None:
        self._timeouts = await self.db.run(
            functools.partial(
                register_worker, queue=self.flow.slug, worker_id=self.worker_id, function_name=self.function_name
            )
        )

    async def _deregister(self) -> None:
        try:
            with trio.move_on_after(5):
                await self.db.run(functools.partial(deregister_worker, worker_id=self.worker_id))
        except PgflowError as exc:
            log.warning("could not mark worker %s stopped: %s", self.worker_id, exc, extra=self._fields)

    async def _enable_notify(self) -> bool:
        """Make the queue notify whenever a message may have become readable: our triggers notify on inserts and
        when a message becomes visible earlier without an insert (retries, tasks handed back or recovered,
        failures reported by any process). Once per queue; concurrent workers serialize on a lock. (pgmq's own
        insert notifications are not used: they stay silent for a queue name with capitals.)"""
        try:
            await self.db.run(functools.partial(enable_queue_notifications, queue=self.flow.slug))
            return True
        except DatabaseError as exc:
            log.warning("queue notifications unavailable (%s); polling instead", exc, extra=self._fields)
            return False

    # ---- reading -------------------------------------------------------------------------------------------
    async def _wait_for_capacity(self) -> int:
        """Free slots to read for: any when idle; while tasks run, at least half a batch, so that one slot freed
        at a time does not turn into one read (three round trips) per message."""
        batch = min(self.options.batch_size, self.options.concurrency)
        while True:
            free = self.options.concurrency - len(self._running)
            if free >= max(1, batch // 2) or (free > 0 and not self._running):
                return free
            await self._capacity_changed.wait()

    def _capacity_update(self) -> None:
        self._capacity_changed.set()
        self._capacity_changed = trio.Event()
        if not self._running:
            self._idle.set()

    async def _read_loop(self, tasks: trio.Nursery, signal: str) -> None:
        interval = self.options.poll_min
        paused = False
        with self._intake:
            while True:
                free = await self._wait_for_capacity()
                qty = min(self.options.batch_size, free)
                self._wake = trio.Event()
                read_at = trio.current_time()
                try:
                    result = await self._read(qty, signal, interval, read_at)
                except PgflowError as exc:
                    log.warning("worker %s: read failed (%s); retrying", self.worker_id, exc, extra=self._fields)
                    await trio.sleep(min(self.options.poll_max * 2, 5.0))
                    continue
                self.stats.reads += 1
                with trio.CancelScope(shield=True), trio.move_on_after(5):  # the claim committed: keep its tasks
                    await fetch_trace_contexts(self.db, result.tasks, self.options.otel)
                paused = self._note_pause(result, paused)
                for task in result.tasks:
                    self._spawn(tasks, task, read_at)
                if result.read:
                    interval = self.options.poll_min
                    continue
                interval = min(interval * 2, self.options.poll_max)
                if signal == "notify":
                    wait = self.options.fallback_poll
                    if result.next_visible_in is not None:
                        wait = min(wait, max(result.next_visible_in, 0.005))
                    with trio.move_on_after(wait):
                        await self._wake.wait()

    async def _read(self, qty: int, signal: str, interval: float, read_at: float) -> PausableRead:
        """One read-and-claim of up to `qty` messages, between worker.poll.start and worker.poll.stop (also when
        the read fails or is cancelled: then it read nothing)."""
        if wanted(PollStart):
            emit(PollStart(at=time.time(), worker_id=self.worker_id, flow_slug=self.flow.slug, asked=qty))
        result: PausableRead | None = None
        try:
            result = await self.db.run(
                functools.partial(
                    read_and_claim_unless_paused,
                    queue=self.flow.slug,
                    worker_id=self.worker_id,
                    qty=qty,
                    visibility=self.options.read_visibility,
                    poll_seconds=self.options.poll_seconds if signal == "poll" else None,
                    poll_interval_ms=max(1, int(interval * 1000)),
                    want_next_visible=signal == "notify",
                )
            )
            return result
        finally:
            if wanted(PollStop):
                emit(
                    PollStop(
                        at=time.time(),
                        worker_id=self.worker_id,
                        flow_slug=self.flow.slug,
                        asked=qty,
                        read=0 if result is None else len(result.tasks),
                        duration=trio.current_time() - read_at,
                    )
                )

    def _note_pause(self, result: PausableRead, was_paused: bool) -> bool:
        """Log when the queue's pause begins or ends, as this worker sees it; whether it is paused now."""
        paused = result.paused
        if paused and not was_paused:
            log.info(
                "worker %s: queue %s is paused; reading nothing until it is resumed",
                self.worker_id,
                self.flow.slug,
                extra=self._fields,
            )
        elif was_paused and not paused:
            log.info(
                "worker %s: queue %s was resumed; reading again", self.worker_id, self.flow.slug, extra=self._fields
            )
        return paused

    async def _notify_loop(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        channels = [wake_channel(self.flow.slug)]
        async with open_listener(self.db, channels) as listener:
            task_status.started()
            async for event in listener:
                if isinstance(event, MissedNotifications):
                    log.info("worker %s: %s; reading now", self.worker_id, event.reason, extra=self._fields)
                elif isinstance(event, Notification) and event.payload.startswith(_CANCEL_PREFIX):
                    self._cancel_run_id(event.payload.removeprefix(_CANCEL_PREFIX))
                    continue
                self._wake.set()

    async def _drain(self, tasks: trio.Nursery) -> None:
        if self._running:
            log.info(
                "worker %s: waiting up to %ss for %d running tasks",
                self.worker_id,
                self.options.shutdown_grace,
                len(self._running),
                extra=self._fields,
            )
            self._idle = trio.Event()
            with trio.move_on_after(self.options.shutdown_grace):
                while self._running:
                    await self._idle.wait()
        tasks.cancel_scope.cancel()

    # ---- running tasks -------------------------------------------------------------------------------------
    def _spawn(self, tasks: trio.Nursery, task: ClaimedTask, read_at: float) -> None:
        """Run a claimed task. Its message stays invisible for `read_visibility` from the read (pgflow 0.8.1's
        start_tasks means to set it to the timeout + 2 s, but that statement of it never runs); the extend loop
        keeps it invisible for as long as the task runs."""
        running = _Running(task, read_at + self.options.read_visibility)
        self._running[task.msg_id] = running
        self.stats.started += 1
        tasks.start_soon(self._execute, running)

    async def _execute(self, running: _Running) -> None:
        task = running.task
        timeout = self._timeouts.get(task.step_slug, 60)
        ctx = self.served.context(task, self.worker_id)
        running.began = trio.current_time()
        if task.enqueued_at is not None:
            running.queue_wait = max(0.0, time.time() - task.enqueued_at.timestamp())
        if wanted(TaskStart):
            emit(TaskStart(at=time.time(), **self._task_meta(task), queue_wait=running.queue_wait))
        try:
            try:
                with (
                    running.scope,
                    trio.move_on_after(timeout) as deadline,
                    task_span(self.flow.slug, task, self.worker_id, deadline, self.options.otel),
                ):
                    output_json = await self.served.invoke(task, ctx)
                if running.scope.cancel_called:  # its run ended under it: even an output it returned is stale
                    await self._abandon(running)
                    return
            except TaskInputError as bad:
                outcome = self._on_exception(running, bad, retryable=False)
                await self._report("fail_permanently", task, _error_text(bad), outcome)
                return
            except Exception as exc:
                outcome = self._on_exception(running, exc, retryable=True)
                await self._report("fail", task, _error_text(exc), outcome)
                return
            if deadline.cancelled_caught:
                log.warning(
                    "task %s/%s[%d] of run %s timed out after %ss",
                    self.flow.slug,
                    task.step_slug,
                    task.task_index,
                    task.run_id,
                    timeout,
                    extra=self._task_fields(task),
                )
                self.stats.timed_out += 1
                timed_out = None
                if wanted(TaskTimeout):
                    timed_out = TaskTimeout(
                        at=time.time(), **self._task_meta(task), duration=self._ran(running), timeout=timeout
                    )
                await self._report(
                    "fail", task, f"TimeoutError: step {task.step_slug!r} exceeded its timeout of {timeout}s", timed_out
                )
                return
            stopped = None
            if wanted(TaskStop):
                stopped = TaskStop(
                    at=time.time(), **self._task_meta(task), duration=self._ran(running), queue_wait=running.queue_wait
                )
            await self._report("complete", task, output_json, stopped)
            self.stats.completed += 1
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await self._release(running)
            raise
        finally:
            del self._running[task.msg_id]
            self._capacity_update()

    def _task_meta(self, task: ClaimedTask) -> dict[str, Any]:
        """The metadata every task event carries."""
        return {
            "worker_id": self.worker_id,
            "flow_slug": self.flow.slug,
            "step_slug": task.step_slug,
            "task_index": task.task_index,
            "attempt": task.attempt,
            "run_id": task.run_id,
            "msg_id": task.msg_id,
        }

    def _task_fields(self, task: ClaimedTask) -> dict[str, Any]:
        """The same, as `extra` of a log record."""
        return task_fields(
            worker_id=self.worker_id,
            flow_slug=self.flow.slug,
            step_slug=task.step_slug,
            task_index=task.task_index,
            run_id=task.run_id,
            attempt=task.attempt,
            msg_id=task.msg_id,
        )

    @staticmethod
    def _ran(running: _Running) -> float:
        return trio.current_time() - running.began

    def _on_exception(self, running: _Running, exc: Exception, *, retryable: bool) -> TaskException | None:
        """A handler raised: one log line (`Type: message`), the failure counted; the task.exception record to emit
        once the failure is reported (None when nobody listens)."""
        task = running.task
        duration = self._ran(running)
        self.stats.failed += 1
        where = f"task {self.flow.slug}/{task.step_slug}[{task.task_index}] of run {task.run_id}"
        if retryable:
            message = f"{where} failed (attempt {task.attempt})"
        else:
            message = f"{where} failed without retry, its input does not fit the handler"
        log_failure(
            log,
            logging.ERROR,
            message,
            exc,
            extra=self._task_fields(task),
            tracebacks=self.options.log_tracebacks,
        )
        if not wanted(TaskException):
            return None
        return TaskException(
            at=time.time(),
            **self._task_meta(task),
            duration=duration,
            error_type=type(exc).__name__,
            error=str(exc)[:_ERROR_LIMIT],
            retryable=retryable,
        )

    async def _abandon(self, running: _Running) -> None:
        """The task's run was cancelled or failed while its handler ran, and the handler was cancelled: not a
        failure of the task. A cancelled run's tasks are already failed; a run pgflow failed (another step ran out
        of attempts) still shows this task started, so mark it failed without a retry, only while it is still
        this worker's (a run retried in the meantime may have handed it to another worker)."""
        task = running.task
        self.stats.cancelled += 1
        log.info(
            "task %s/%s[%d] of run %s: handler cancelled, its run was cancelled or failed",
            self.flow.slug,
            task.step_slug,
            task.task_index,
            task.run_id,
            extra=self._task_fields(task),
        )
        cancelled = None
        if wanted(TaskCancel):
            cancelled = TaskCancel(at=time.time(), **self._task_meta(task), duration=self._ran(running))
        await self._report(
            "fail_permanently", task, "cancelled: the run was cancelled or failed while the task ran", cancelled
        )
        try:  # a retry of the run holds this task back until its attempt ended: say it did
            await self.db.run(functools.partial(attempt_ended, task=task))
        except PgflowError as exc:  # the retry then waits for the attempt's timeout instead
            log.info("worker %s: could not record an ended attempt (%s)", self.worker_id, exc, extra=self._fields)

    def _cancel_run_id(self, text: str) -> None:
        try:
            run_id = uuid.UUID(text)
        except ValueError:
            log.warning("worker %s: ignoring malformed cancellation %r", self.worker_id, text[:100], extra=self._fields)
            return
        self._cancel_runs({run_id})

    def _cancel_runs(self, run_ids: set[uuid.UUID]) -> None:
        """Cancel the running handlers of these runs (their runs ended: cancelled or failed)."""
        for running in self._running.values():
            if running.task.run_id in run_ids:
                running.scope.cancel()

    async def _report(self, kind: _Report, task: ClaimedTask, payload: str, outcome: Event | None = None) -> None:
        """complete_task (batched) or fail_task, retried while the connection is down; a complete_task the
        database rejects becomes a fail_task with its error. Recovery covers whatever still fails. When someone
        listens for run.completed/run.failed, the report also says whether it ended the run.

        `outcome`, the attempt's outcome event, is emitted once the report is done: a report cancelled on shutdown
        hands the task back instead (task.released), so an attempt has one outcome; a report that gives up emits
        none (recovery settles the task)."""
        delay = 0.1
        where = f"{task.run_id}/{task.step_slug}[{task.task_index}]"
        for attempt in range(6):
            try:
                if kind == "complete":
                    await self._completer.complete(task, payload, outcome)
                    return
                else:
                    check = wanted(RunFail) or wanted(RunComplete)
                    report = fail if kind == "fail" else fail_permanently
                    ended = await self.db.run(
                        functools.partial(
                            report, worker_id=self.worker_id, task=task, payload=payload, check_ended=check
                        )
                    )
                    if outcome is not None:
                        emit(outcome)
                    emit_ended(ended.ended)
                    return
            except ConnectionLost as exc:
                log.warning(
                    "reporting task %s failed (%s); retry %d", where, exc, attempt + 1, extra=self._task_fields(task)
                )
                await trio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except DatabaseError as exc:
                log.error("%s for %s failed: %s", _SQL_NAMES[kind], where, exc, extra=self._task_fields(task))
                if kind != "complete":
                    return
                kind, payload, outcome = "fail", f"complete_task failed: {exc}"[:_ERROR_LIMIT], None
        log.error("gave up reporting task %s; recovery will requeue it", where, extra=self._task_fields(task))

    async def _release(self, running: _Running) -> None:
        task = running.task
        fields = self._task_fields(task)
        try:
            with trio.move_on_after(5):
                released = await self.db.run(functools.partial(release, worker_id=self.worker_id, tasks=[task]))
                self.stats.released += released
                if released:
                    log.info(
                        "handed back task %s/%s[%d] of run %s",
                        self.flow.slug,
                        task.step_slug,
                        task.task_index,
                        task.run_id,
                        extra=fields,
                    )
                    if wanted(TaskRelease):
                        emit(TaskRelease(at=time.time(), **self._task_meta(task), duration=self._ran(running)))
        except PgflowError as exc:
            log.warning(
                "could not hand back task %s/%s[%d]: %s; recovery will requeue it",
                task.run_id,
                task.step_slug,
                task.task_index,
                exc,
                extra=fields,
            )

    # ---- background duties ---------------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        while True:
            await trio.sleep(self.options.heartbeat_interval)
            try:
                deprecated = await self.db.run(functools.partial(heartbeat, worker_id=self.worker_id))
            except PgflowError as exc:
                log.warning("worker %s: heartbeat failed: %s", self.worker_id, exc, extra=self._fields)
                continue
            if deprecated and not self._stopping:
                log.info("worker %s was marked deprecated: draining", self.worker_id, extra=self._fields)
                self.stop()

    async def _recovery_loop(self) -> None:
        while True:
            await trio.sleep(self.options.recovery_interval * random.uniform(0.5, 1.0))
            try:
                recovery = await self.db.run(
                    functools.partial(
                        recover_observed,
                        stale_after=self.options.stale_after,
                        timeout_grace=self.options.timeout_grace,
                        check_ended=wanted(RunFail),
                    )
                )
            except PgflowError as exc:
                log.warning("worker %s: recovery failed: %s", self.worker_id, exc, extra=self._fields)
                continue
            for task in recovery.tasks:
                self.stats.recovered += 1
                flow_slug = recovery.flow_slugs.get(task.run_id, "")
                log.warning(
                    "recovered task %s/%s[%d]: %s",
                    task.run_id,
                    task.step_slug,
                    task.task_index,
                    task.reason,
                    extra=task_fields(
                        worker_id=self.worker_id,
                        flow_slug=flow_slug,
                        step_slug=task.step_slug,
                        task_index=task.task_index,
                        run_id=task.run_id,
                    ),
                )
                if wanted(TaskRecover):
                    emit(
                        TaskRecover(
                            at=time.time(),
                            worker_id=self.worker_id,
                            flow_slug=flow_slug,
                            run_id=task.run_id,
                            step_slug=task.step_slug,
                            task_index=task.task_index,
                            reason=task.reason,
                        )
                    )
            emit_ended(recovery.ended)

    async def _run_check_loop(self) -> None:
        """While tasks run, check that their runs still run; cancel the handlers of runs that ended. (With
        signal=notify a cancellation also arrives at once as a notification; this bounds it when that is lost or
        events are off, and catches runs pgflow failed because another step ran out of attempts.)"""
        while True:
            await trio.sleep(self.options.run_check_interval)
            run_ids = {r.task.run_id for r in self._running.values() if not r.scope.cancel_called}
            if not run_ids:
                continue
            try:
                ended = await self.db.run(functools.partial(ended_runs, run_ids=run_ids))
            except PgflowError as exc:
                log.warning("worker %s: checking runs failed: %s", self.worker_id, exc, extra=self._fields)
                continue
            if ended:
                self._cancel_runs(set(ended))

    async def _extend_loop(self) -> None:
        margin = self.options.extend_margin
        while True:
            await trio.sleep(max(margin / 3, 0.2))
            now = trio.current_time()
            due = [r for r in self._running.values() if r.visible_until - now < margin]
            if not due:
                continue
            offset = math.ceil(margin * 3)
            try:
                await self.db.run(
                    functools.partial(
                        extend_visibility, queue=self.flow.slug, msg_ids=[r.task.msg_id for r in due], seconds=offset
                    )
                )
            except PgflowError as exc:
                log.warning("worker %s: extending visibility failed: %s", self.worker_id, exc, extra=self._fields)
                continue
            for r in due:
                r.visible_until = now + offset


def _seconds(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:_ERROR_LIMIT]
