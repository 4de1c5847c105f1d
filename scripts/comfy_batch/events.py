"""The websocket side: wakes up whoever waits for a prompt as soon as the server says it ended.

Events are only a hint to look now; ``/history`` stays the record of how a run ended, so a
dropped or missing socket makes waits slower (polling), never wrong.
"""
from __future__ import annotations

import asyncio
import contextlib
import json

import aiohttp

# Messages after which a prompt's history entry exists or is about to.
_END_EVENTS = ("execution_success", "execution_error", "execution_interrupted")
_RECONNECT_DELAYS = (0.5, 1, 2, 5)  # then every 5 s while the batch runs


class ExecutionEvents:
    def __init__(self, session: aiohttp.ClientSession, ws_url: str):
        self._session = session
        self._ws_url = ws_url
        self._ended: dict[str, asyncio.Event] = {}
        self._connected = asyncio.Event()
        self._task: asyncio.Task | None = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def ended(self, prompt_id: str) -> asyncio.Event:
        return self._ended.setdefault(prompt_id, asyncio.Event())

    async def start(self, wait_s: float) -> None:
        """Connects in the background; waits up to ``wait_s`` so the first prompt's events are seen."""
        self._task = asyncio.create_task(self._listen())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._connected.wait(), wait_s)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def handle(self, text: str) -> None:
        """Takes one text frame from the server."""
        try:
            message = json.loads(text)
        except json.JSONDecodeError:
            return
        kind, data = message.get("type"), message.get("data") or {}
        ended = kind in _END_EVENTS or (kind == "executing" and data.get("node") is None)
        if ended and data.get("prompt_id"):
            self.ended(data["prompt_id"]).set()

    async def _listen(self) -> None:
        failures = 0
        while True:
            try:
                async with self._session.ws_connect(self._ws_url, heartbeat=30, max_msg_size=0) as ws:
                    self._connected.set()
                    failures = 0
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            self.handle(msg.data)
                        elif msg.type == aiohttp.WSMsgType.ERROR:
                            break
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                pass
            self._connected.clear()
            await asyncio.sleep(_RECONNECT_DELAYS[min(failures, len(_RECONNECT_DELAYS) - 1)])
            failures += 1
