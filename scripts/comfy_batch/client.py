"""The HTTP calls the batch makes to one ComfyUI server (endpoints as in ComfyUI 0.3.75)."""
from __future__ import annotations

import os
from pathlib import Path

import aiohttp

from .history import FileRef

# Bounded waits: a hung server fails the call instead of hanging the batch.
_API_TIMEOUT = aiohttp.ClientTimeout(total=60)
_TRANSFER_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)


class ServerError(RuntimeError):
    """The server answered in a way the batch cannot use."""


class PromptRejected(Exception):
    """``POST /prompt`` answered 400: the prompt failed validation and was not queued."""

    def __init__(self, message: str, node_errors: dict):
        super().__init__(message)
        self.node_errors = node_errors


def rejection_message(body: object) -> str:
    """One line from a 400 body: the error, then each node's errors with the input they name."""
    if not isinstance(body, dict):
        return str(body)
    error = body.get("error")
    if isinstance(error, dict):
        parts = [str(error.get("message") or error.get("type") or "invalid prompt")]
        if error.get("details"):
            parts[0] += f" ({error['details']})"
    else:
        parts = [str(error or "invalid prompt")]
    for node_id, node in (body.get("node_errors") or {}).items():
        for e in node.get("errors", []):
            line = f"node {node_id} ({node.get('class_type')}){node_error_text(e)}"
            if line not in parts:  # a node's own verdict comes once per input (see node_error_text)
                parts.append(line)
    return parts[0] + (": " + "; ".join(parts[1:]) if len(parts) > 1 else "")


def node_error_text(error: dict) -> str:
    """What follows "node N (class)" for one node error: ' <input>: <message>', or ': <verdict>' for
    the node's own validation (``validate_inputs``). That verdict is about the node as a whole, yet
    ComfyUI repeats it once per input as details '<input> - <verdict>'; naming those inputs would
    point at the wrong ones."""
    details, message = str(error.get("details") or ""), error.get("message")
    if error.get("type") == "custom_validation_failed":
        input_name = str((error.get("extra_info") or {}).get("input_name") or "")
        verdict = details.removeprefix(f"{input_name} - ")
        return f": {verdict if verdict and verdict != input_name else message}"
    return f"{' ' + details if details else ''}: {message}"


class ComfyClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, client_id: str):
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id

    @property
    def ws_url(self) -> str:
        scheme, rest = self.base_url.split("://", 1)
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws?clientId={self.client_id}"

    async def _call(self, method: str, path: str, **kwargs) -> object:
        async with self.session.request(method, self.base_url + path, timeout=_API_TIMEOUT, **kwargs) as r:
            if r.status != 200:
                raise ServerError(f"{method} {path} answered HTTP {r.status}: {(await r.text())[:500]}")
            if r.content_type == "application/json":
                return await r.json()
            return None

    async def system_stats(self) -> dict:
        return await self._call("GET", "/system_stats")

    async def queue_prompt(self, prompt: dict, prompt_id: str) -> None:
        body = {"prompt": prompt, "client_id": self.client_id, "prompt_id": prompt_id}
        async with self.session.post(self.base_url + "/prompt", json=body, timeout=_API_TIMEOUT) as r:
            if r.status == 400:
                try:
                    answer = await r.json(content_type=None)
                except ValueError:
                    answer = await r.text()
                node_errors = answer.get("node_errors") if isinstance(answer, dict) else None
                raise PromptRejected(rejection_message(answer), node_errors or {})
            if r.status != 200:
                raise ServerError(f"POST /prompt answered HTTP {r.status}: {(await r.text())[:500]}")

    async def history(self, prompt_id: str) -> dict | None:
        answer = await self._call("GET", f"/history/{prompt_id}")
        return (answer or {}).get(prompt_id)

    async def forget_history(self, prompt_ids: list[str]) -> None:
        await self._call("POST", "/history", json={"delete": prompt_ids})

    async def queue_ids(self) -> tuple[set[str], set[str]]:
        """(running, pending) prompt ids, whoever queued them."""
        answer = await self._call("GET", "/queue")
        return ({item[1] for item in answer.get("queue_running", [])},
                {item[1] for item in answer.get("queue_pending", [])})

    async def delete_queued(self, prompt_ids: list[str]) -> None:
        # The server ignores ids that are not pending, so a running prompt is untouched.
        await self._call("POST", "/queue", json={"delete": prompt_ids})

    async def interrupt(self, prompt_id: str) -> None:
        # Targeted: the server ignores it unless this prompt is the one running.
        await self._call("POST", "/interrupt", json={"prompt_id": prompt_id})

    async def upload(self, path: Path) -> str:
        """Puts a local file in the server's input folder; returns the name a loader node takes.
        ``/upload/image`` takes videos too, and reuses the name of an identical earlier upload."""
        path = Path(path)
        with open(path, "rb") as f:
            form = aiohttp.FormData()
            form.add_field("image", f, filename=path.name)
            form.add_field("type", "input")
            async with self.session.post(self.base_url + "/upload/image", data=form,
                                         timeout=_TRANSFER_TIMEOUT) as r:
                if r.status != 200:
                    raise ServerError(f"uploading {path} answered HTTP {r.status}: {(await r.text())[:500]}")
                answer = await r.json()
        name, subfolder = answer["name"], answer.get("subfolder") or ""
        return f"{subfolder}/{name}" if subfolder else name

    async def download(self, ref: FileRef, dest: Path) -> None:
        """Writes to a hidden temporary name beside ``dest`` and renames it only when complete,
        so ``dest`` is never a partial file."""
        temp = dest.with_name(f".{dest.name}.part")
        try:
            async with self.session.get(self.base_url + "/view", params=ref.query,
                                        timeout=_TRANSFER_TIMEOUT) as r:
                if r.status != 200:
                    raise ServerError(f"GET /view for {ref.type}/{ref.subfolder}/{ref.filename} "
                                      f"answered HTTP {r.status}")
                written = 0
                with open(temp, "wb") as f:
                    async for chunk in r.content.iter_chunked(1 << 20):
                        f.write(chunk)
                        written += len(chunk)
                if r.content_length is not None and written != r.content_length:
                    raise ServerError(f"{ref.filename}: got {written} of {r.content_length} bytes")
            os.replace(temp, dest)
        except aiohttp.ClientPayloadError as e:  # a broken transfer fails this item, not the batch
            raise ServerError(f"{ref.filename}: download broke off: {e}") from e
        finally:
            temp.unlink(missing_ok=True)
