"""Runs the items of one batch against one server.

Items are queued in file order, keeping at most ``depth`` of them on the server at once, and are
collected in the same order: the server runs its queue first in, first out, so the oldest item
is the one running. Each item's timeout therefore counts from the moment the previous item of
this batch ended (or from its own queueing, if later).

Before queueing an item the server is asked about its deterministic prompt id: a prompt still in
the queue (left by a batch that died) is followed instead of queued twice, a finished success is
collected, and an earlier failure is removed from the history before the item runs again.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .client import ComfyClient, PromptRejected, ServerError
from .events import ExecutionEvents
from .history import FileRef, is_finished, outcome_of, output_files
from .items import Item
from .overrides import OverrideError, apply_overrides, plan_overrides
from .results import Result, ResultsLog, is_done
from .workflow import workflow_hash

POLL_S = 5.0  # history check while the websocket is up: a safety net only
FALLBACK_POLL_S = 1.0  # history check while the websocket is down
HISTORY_LAG_S = 0.1  # the server stores history just after the "ended" event
ABORT_WAIT_S = 30.0  # how long Ctrl-C waits for the interrupted prompt to leave the queue


@dataclass
class Flight:
    """An item handed to the server (or being handed: its prompt may already be queued)."""
    index: int
    item: Item
    prompt_id: str
    queued_at: float


@dataclass
class Summary:
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    interrupted: int = 0

    def count(self, status: str) -> None:
        if status == "success":
            self.succeeded += 1
        elif status == "interrupted":
            self.interrupted += 1
        else:
            self.failed += 1

    def line(self) -> str:
        text = f"batch: {self.succeeded} succeeded, {self.failed} failed, {self.skipped} skipped"
        return text + (f", {self.interrupted} interrupted" if self.interrupted else "")


def local_names(refs: list[FileRef]) -> list[str]:
    """File names for one item's folder: the server's names, made unique (two output nodes may
    write the same name into different subfolders)."""
    names: list[str] = []
    for ref in refs:
        name = Path(ref.filename).name
        stem, suffix = Path(name).stem, Path(name).suffix
        n = 1
        while name in names:
            n += 1
            name = f"{stem}-{n}{suffix}"
        names.append(name)
    return names


class BatchRunner:
    def __init__(self, client: ComfyClient, events: ExecutionEvents, log: ResultsLog, *,
                 workflow: dict, items: list[Item], previous: dict[str, dict], out_dir: Path,
                 timeout_s: float, depth: int, echo: Callable[[str], None] = print):
        self.client = client
        self.events = events
        self.log = log
        self.workflow = workflow
        self.digest = workflow_hash(workflow)
        self.items = items
        self.previous = previous
        self.out_dir = Path(out_dir)
        self.timeout_s = timeout_s
        self.depth = depth
        self.echo = echo
        self.summary = Summary()
        self.in_flight: deque[Flight] = deque()
        self._last_end = time.monotonic()

    def _progress(self, index: int, item_id: str, text: str) -> None:
        width = len(str(len(self.items)))
        self.echo(f"[{index:>{width}}/{len(self.items)}] {item_id} {text}")

    def _record(self, index: int, result: Result) -> None:
        self.log.append(result)
        self.summary.count(result.status)
        error = f": {result.error}" if result.error else ""
        self._progress(index, result.id, f"{result.status} {result.seconds:.1f}s{error}")

    async def run(self) -> Summary:
        for index, item in enumerate(self.items, start=1):
            prompt_id = item.prompt_id(self.digest)
            if is_done(self.previous.get(item.id), prompt_id):
                self.summary.skipped += 1
                self._progress(index, item.id, "skipped (already succeeded)")
                continue
            while len(self.in_flight) >= self.depth:
                await self._collect_oldest()
            await self._submit(index, item, prompt_id)
        while self.in_flight:
            await self._collect_oldest()
        return self.summary

    async def _submit(self, index: int, item: Item, prompt_id: str) -> None:
        started = time.monotonic()

        def fail(status: str, message: str, node_errors: dict | None = None) -> None:
            self._record(index, Result(item.id, prompt_id, status, error=message, node_errors=node_errors,
                                       seconds=time.monotonic() - started))

        if item.error:
            return fail("invalid", item.error)
        try:
            plan = plan_overrides(self.workflow, item.named, item.set_values)
        except OverrideError as e:
            return fail("invalid", str(e))
        if await self._server_has(prompt_id):
            self.in_flight.append(Flight(index, item, prompt_id, started))
            return
        try:
            plan = [dataclasses.replace(a, value=await self.client.upload(Path(a.value)), is_media=False)
                    if a.is_media else a for a in plan]
        except (ServerError, OSError) as e:
            return fail("error", f"upload failed: {e}")
        flight = Flight(index, item, prompt_id, time.monotonic())
        self.in_flight.append(flight)  # before the POST: Ctrl-C during it must still cancel the prompt
        try:
            await self.client.queue_prompt(apply_overrides(self.workflow, plan), prompt_id)
        except PromptRejected as e:
            self.in_flight.remove(flight)
            fail("invalid", str(e), e.node_errors)
        except ServerError as e:
            self.in_flight.remove(flight)
            fail("error", str(e))

    async def _server_has(self, prompt_id: str) -> bool:
        """True when the server already holds this prompt queued, running or succeeded."""
        running, pending = await self.client.queue_ids()
        if prompt_id in running or prompt_id in pending:
            return True
        entry = await self.client.history(prompt_id)
        if is_finished(entry) and outcome_of(entry).status == "success":
            return True
        if entry:  # an earlier failed run; drop it so waiting cannot mistake it for the new run
            await self.client.forget_history([prompt_id])
        return False

    async def _collect_oldest(self) -> None:
        flight = self.in_flight[0]
        started = max(flight.queued_at, self._last_end)
        try:
            entry = await self._wait_for_end(flight.prompt_id, started + self.timeout_s)
        except asyncio.TimeoutError:
            await self._cancel_on_server([flight.prompt_id])
            result = Result(flight.item.id, flight.prompt_id, "error",
                            error=f"timed out after {self.timeout_s:g} s; cancelled on the server")
        else:
            result = await self._result_from(flight, entry)
        result.seconds = time.monotonic() - started
        self.in_flight.popleft()
        self._record(flight.index, result)
        self._last_end = time.monotonic()

    async def _wait_for_end(self, prompt_id: str, deadline: float) -> dict:
        ended = self.events.ended(prompt_id)
        while True:
            entry = await self.client.history(prompt_id)
            if is_finished(entry):
                return entry
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise asyncio.TimeoutError
            if ended.is_set():
                await asyncio.sleep(min(HISTORY_LAG_S, remaining))
                continue
            poll = POLL_S if self.events.connected else FALLBACK_POLL_S
            try:
                await asyncio.wait_for(ended.wait(), min(poll, remaining))
            except asyncio.TimeoutError:
                pass

    async def _result_from(self, flight: Flight, entry: dict) -> Result:
        outcome = outcome_of(entry)
        result = Result(flight.item.id, flight.prompt_id, outcome.status, error=outcome.error)
        if outcome.status == "success":
            try:
                result.outputs = await self._download(flight.item.id, output_files(entry))
            except (ServerError, OSError) as e:
                result.status, result.error = "error", f"ran, but downloading its outputs failed: {e}"
        return result

    async def _download(self, item_id: str, refs: list[FileRef]) -> list[str]:
        folder = self.out_dir / item_id
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for ref, name in zip(refs, local_names(refs)):
            dest = (folder / name).resolve()
            await self.client.download(ref, dest)
            paths.append(str(dest))
        return paths

    async def _cancel_on_server(self, prompt_ids: list[str]) -> None:
        """Removes these prompts from the queue and interrupts the one running; returns once none
        of them is queued or running, or after ABORT_WAIT_S."""
        deadline = time.monotonic() + ABORT_WAIT_S
        while time.monotonic() < deadline:
            running, pending = await self.client.queue_ids()
            queued = [p for p in prompt_ids if p in pending]
            busy = [p for p in prompt_ids if p in running]
            if not queued and not busy:
                return
            if queued:
                await self.client.delete_queued(queued)
            for prompt_id in busy:
                await self.client.interrupt(prompt_id)
            await asyncio.sleep(HISTORY_LAG_S * 2)

    async def abort(self) -> None:
        """After Ctrl-C: cancel this batch's prompts on the server and log how each one ended."""
        if not self.in_flight:
            return
        await self._cancel_on_server([f.prompt_id for f in self.in_flight])
        while self.in_flight:
            flight = self.in_flight[0]
            entry = await self.client.history(flight.prompt_id)
            if is_finished(entry):
                result = await self._result_from(flight, entry)
                result.seconds = time.monotonic() - max(flight.queued_at, self._last_end)
            else:
                result = Result(flight.item.id, flight.prompt_id, "interrupted",
                                error="cancelled by Ctrl-C before it ran; removed from the server queue")
            self.in_flight.popleft()
            self._record(flight.index, result)
