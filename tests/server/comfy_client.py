"""A small client for a running ComfyUI: JSON over HTTP, and the websocket that reports progress
(through aiohttp, which ComfyUI's own server depends on, so every ComfyUI interpreter has it)."""
from __future__ import annotations

import asyncio
import json
import struct
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp


# A client that does not announce the "supports_preview_metadata" feature (this one) receives each latent
# preview as ComfyUI's PREVIEW_IMAGE message: a big-endian u32 event type (1), a u32 image type, the image.
PREVIEW_IMAGE = 1
PREVIEW_FORMATS = {1: "JPEG", 2: "PNG"}


@dataclass(frozen=True)
class PreviewFrame:
    format: str  # JPEG or PNG
    data: bytes  # the encoded image


def preview_frame(message: bytes) -> PreviewFrame:
    """A binary websocket message of ``run_prompt`` as the latent preview it carries."""
    event, image_type = struct.unpack(">II", message[:8])
    if event != PREVIEW_IMAGE or image_type not in PREVIEW_FORMATS:
        raise ValueError(f"not a preview image message: event type {event}, image type {image_type}")
    return PreviewFrame(format=PREVIEW_FORMATS[image_type], data=bytes(message[8:]))


class PromptRejected(AssertionError):
    """POST /prompt answered 400; ``body`` holds ComfyUI's error and per-node errors."""

    def __init__(self, body: dict):
        super().__init__(f"ComfyUI rejected the prompt:\n{json.dumps(body, indent=1)}")
        self.body = body


@dataclass(frozen=True)
class ComfyClient:
    url: str  # http://127.0.0.1:<port>
    log_path: Path  # the server's combined stdout/stderr
    pack_name: str  # the pack's folder name under custom_nodes/
    models_dir: Path  # a models/ layout whose lance/ and vae/ are this server's model folders

    @property
    def python_module(self) -> str:
        """What /object_info reports as ``python_module`` for the pack's nodes."""
        return f"custom_nodes.{self.pack_name}"

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def get_json(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            return json.load(response)

    def post_prompt(self, prompt: dict, client_id: str | None = None) -> str:
        """Queue an API-format prompt; returns its prompt id. Raises PromptRejected on a 400."""
        body = {"prompt": prompt} | ({"client_id": client_id} if client_id else {})
        request = urllib.request.Request(self.url + "/prompt", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.load(response)["prompt_id"]
        except urllib.error.HTTPError as error:
            if error.code == 400:
                raise PromptRejected(json.load(error)) from None
            raise

    def wait_for_history(self, prompt_id: str, timeout: float) -> dict:
        """The history entry of a prompt (``outputs``, ``status``), once it has finished or failed."""
        deadline = time.monotonic() + timeout
        while True:
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry is not None:
                return entry
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} still unfinished after {timeout} s; "
                                   f"queue: {self.get_json('/queue')}")
            time.sleep(0.2)

    def run_prompt(self, prompt: dict, timeout: float) -> tuple[dict, list]:
        """Queue ``prompt`` and follow it on the websocket until the server reports it done.

        Returns the prompt's history entry and every websocket message received meanwhile, in order:
        text messages as their decoded JSON (``{"type": ..., "data": ...}``), binary ones (latent
        previews, see ``preview_frame``) as bytes.
        """
        return asyncio.run(asyncio.wait_for(self._follow_prompt(prompt), timeout))

    def run_and_interrupt(self, prompt: dict, node: str, trigger: str, timeout: float) -> tuple[dict, list]:
        """``run_prompt``, with a POST /interrupt when ``node`` first sends a ``trigger`` message:
        "executing" (it starts) or "progress" (its first progress report)."""
        return asyncio.run(asyncio.wait_for(self._follow_prompt(prompt, (trigger, node)), timeout))

    async def _follow_prompt(self, prompt: dict, interrupt_on: tuple[str, str] | None = None) -> tuple[dict, list]:
        client_id = uuid.uuid4().hex
        messages: list = []
        async with aiohttp.ClientSession() as session:
            # Connect before queueing, so no message of this prompt can be missed.
            async with session.ws_connect(f"{self.url.replace('http', 'ws', 1)}/ws?clientId={client_id}") as ws:
                prompt_id = await asyncio.to_thread(self.post_prompt, prompt, client_id)
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.BINARY:
                        messages.append(message.data)
                    elif message.type == aiohttp.WSMsgType.TEXT:
                        event = json.loads(message.data)
                        messages.append(event)
                        if interrupt_on == (event["type"], event["data"].get("node")):
                            interrupt_on = None  # once
                            async with session.post(f"{self.url}/interrupt", json={}) as response:
                                assert response.status == 200, f"POST /interrupt answered {response.status}"
                        # The server's last word on a prompt, sent after its history entry is stored.
                        if event["type"] == "executing" and event["data"] == {"node": None, "prompt_id": prompt_id}:
                            break
                else:
                    raise ConnectionError(f"the websocket closed before prompt {prompt_id} finished")
        return self.wait_for_history(prompt_id, timeout=30), messages


def progress_values(messages: list, node: str) -> list[int]:
    """The progress values ``node`` reported, in order, among the messages of ``run_prompt``."""
    return [m["data"]["value"] for m in messages if isinstance(m, dict) and m["type"] == "progress"
            and m["data"]["node"] == node]
