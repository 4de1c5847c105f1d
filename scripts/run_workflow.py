#!/usr/bin/env python3
"""Run one API-format workflow on a ComfyUI server, printing its progress as it goes (each node as it
starts, sampler steps), then download its output files and describe them.

    python scripts/run_workflow.py --workflow workflows/api/text_to_video.json --out outputs/ \\
        [--url http://127.0.0.1:8188] [--prompt TEXT] [--seed N] [--width W --height H --frames F --steps S]

The optional values go into the one non-linked input of that name (see scripts/lance_batch.py for
many runs). Exit status: 0 success, 1 the run failed, 2 it could not start, 130 interrupted (the
server is told to stop the run).
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import av
from comfy_batch.client import ComfyClient, PromptRejected, ServerError
from comfy_batch.history import is_finished, outcome_of, output_files
from comfy_batch.overrides import OverrideError, apply_overrides, check_value, plan_overrides
from comfy_batch.workflow import WorkflowError, load_workflow

NAMED = ("prompt", "seed", "width", "height", "frames", "steps")
STEP_REPORT_EVERY_S = 2.0  # a node's steps are printed at most this often (and its first and last)
END_EVENTS = ("execution_success", "execution_error", "execution_interrupted")


def echo(line: str) -> None:
    print(line, flush=True)


class ProgressPrinter:
    """Turns the server's websocket messages about one prompt into log lines."""

    def __init__(self, prompt: dict, prompt_id: str):
        self.titles = {node_id: node.get("_meta", {}).get("title", node["class_type"])
                       for node_id, node in prompt.items()}
        self.prompt_id = prompt_id
        self.started = time.monotonic()
        self.last_step_report = (None, 0.0)  # (node, time)

    def _line(self, text: str) -> None:
        echo(f"[{time.monotonic() - self.started:7.1f} s] {text}")

    def handle(self, kind: str, data: dict) -> bool:
        """Prints what ``kind`` says; True once the prompt has ended."""
        if data.get("prompt_id") != self.prompt_id:
            return False
        node = data.get("node")
        if kind == "execution_cached" and data.get("nodes"):
            self._line("cached: " + ", ".join(self.titles.get(n, n) for n in data["nodes"]))
        elif kind == "executing" and node is not None:
            self._line(f"{self.titles.get(node, node)} (node {node})")
        elif kind == "progress":
            now = time.monotonic()
            last_node, last_time = self.last_step_report
            if node != last_node or data["value"] == data["max"] or now - last_time >= STEP_REPORT_EVERY_S:
                self.last_step_report = (node, now)
                self._line(f"  {self.titles.get(node, node)}: {data['value']}/{data['max']}")
        return kind in END_EVENTS


def describe(path: Path) -> str:
    if path.suffix.lower() not in (".mp4", ".webm", ".mov", ".mkv"):
        return ""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        fps = float(stream.average_rate)
        width, height = stream.codec_context.width, stream.codec_context.height
    return f" ({frames} frames, {width}x{height}, {fps:g} fps: duration {frames / fps:.2f} s)"


async def follow(client: ComfyClient, session: aiohttp.ClientSession, prompt: dict) -> dict:
    prompt_id = str(uuid.uuid4())
    printer = ProgressPrinter(prompt, prompt_id)
    # Connected before queueing, so that no message of this prompt is missed.
    async with session.ws_connect(client.ws_url, heartbeat=30, max_msg_size=0) as ws:
        await client.queue_prompt(prompt, prompt_id)
        echo(f"queued prompt {prompt_id} on {client.base_url}")
        try:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    event = message.json()
                    if printer.handle(event.get("type"), event.get("data") or {}):
                        break
        except asyncio.CancelledError:
            await client.interrupt(prompt_id)
            raise
    while not is_finished(entry := await client.history(prompt_id)):
        await asyncio.sleep(0.2)  # the history entry is written just after the end message
    return entry


async def run(args: argparse.Namespace) -> int:
    workflow = load_workflow(args.workflow)
    named = {name: getattr(args, name) for name in NAMED if getattr(args, name) is not None}
    for name, value in named.items():
        check_value(name, value)
    prompt = apply_overrides(workflow, plan_overrides(workflow, named, {}))
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        client = ComfyClient(session, args.url, str(uuid.uuid4()))
        try:
            entry = await follow(client, session, prompt)
        except PromptRejected as e:
            echo(f"error: the server refused the workflow: {e}")
            return 2
        except (aiohttp.ClientError, ServerError) as e:
            echo(f"error: cannot run on {args.url}: {e or type(e).__name__}; is the server running?")
            return 2
        outcome = outcome_of(entry)
        if outcome.status != "success":
            echo(f"{outcome.status}: {outcome.error}")
            return 1
        args.out.mkdir(parents=True, exist_ok=True)
        for ref in output_files(entry):
            dest = (args.out / ref.filename).resolve()
            await client.download(ref, dest)
            echo(f"output: {dest}{describe(dest)}")
    echo(f"finished in {time.monotonic() - started:.1f} s")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8188", help="ComfyUI server (default: %(default)s)")
    parser.add_argument("--workflow", type=Path, required=True, help="API-format workflow JSON")
    parser.add_argument("--out", type=Path, required=True, help="folder for the downloaded outputs")
    parser.add_argument("--prompt")
    for name in ("seed", "width", "height", "frames", "steps"):
        parser.add_argument(f"--{name}", type=int)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(run(args))
    except (WorkflowError, OverrideError) as e:
        echo(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        echo("interrupted: the server was asked to stop the run")
        return 130


if __name__ == "__main__":
    sys.exit(main())
