#!/usr/bin/env python3
"""Queue many runs of one ComfyUI workflow through the server's HTTP API.

    python scripts/lance_batch.py --workflow t2i_api.json --items prompts.jsonl --out results/

The workflow is in API format ({node_id: {class_type, inputs}}; ComfyUI menu: Workflow > Export
(API)). Each line of the items file is one run, a JSON object with any of:
  id                      stable key of the item (default: its line number); names its output folder
  prompt seed width height frames steps cfg
                          set the one non-linked input named prompt|text, seed|noise_seed, width,
                          height, frames|length|num_frames, steps, cfg; no match or several matches
                          fail the item: then use "set"
  image video             a local file (relative to the items file) uploaded to the server and put
                          into the loader input named image, or video|file
  set                     {"<node_id>.<input>": value, ...} for anything else
e.g. {"id": "cat", "prompt": "a cat on a sofa", "seed": 7, "set": {"12.shift": 3.0}}

Every finished item appends one line to the results file:
  {"id", "prompt_id", "status": success|error|interrupted|invalid, "outputs": [absolute paths],
   "error": message or null, "node_errors" (for invalid), "seconds"}
and its output files land in OUT/<id>/. Running the same command again skips the items that
already succeeded with the same workflow and overrides and whose files are still there.
Ctrl-C cancels this batch's prompts on the server and exits with 130.

Exit status: 0 all items succeeded or were skipped, 1 some items did not, 2 the batch could not
start or lost the server, 130 interrupted.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import uuid
from pathlib import Path

import aiohttp

from comfy_batch.client import ComfyClient, ServerError
from comfy_batch.events import ExecutionEvents
from comfy_batch.items import ItemsError, read_items
from comfy_batch.results import ResultsLog, read_results
from comfy_batch.runner import BatchRunner
from comfy_batch.workflow import WorkflowError, load_workflow

EXIT_OK, EXIT_ITEMS_FAILED, EXIT_NOT_RUN, EXIT_INTERRUPTED = 0, 1, 2, 130
WS_CONNECT_WAIT_S = 5.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8188", help="ComfyUI server (default: %(default)s)")
    parser.add_argument("--workflow", type=Path, required=True, help="API-format workflow JSON")
    parser.add_argument("--items", type=Path, required=True, help="JSONL file, one object of overrides per line")
    parser.add_argument("--out", type=Path, required=True, help="folder for the outputs (OUT/<item id>/...)")
    parser.add_argument("--results", type=Path, help="results JSONL (default: OUT/results.jsonl)")
    parser.add_argument("--client-id", default=None, help="websocket client id (default: a fresh uuid4)")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds one item may run, counted from the end of the previous one "
                             "(default: %(default)g)")
    parser.add_argument("--concurrency", type=int, default=2,
                        help="how many items are queued on the server at once (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    args.client_id = args.client_id or str(uuid.uuid4())
    args.results = args.results or args.out / "results.jsonl"
    return args


def echo(line: str) -> None:
    print(line, flush=True)


def on_sigint(callback) -> None:
    """Runs ``callback`` in the event loop on Ctrl-C (also where the loop cannot own signals)."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, callback)
    except NotImplementedError:  # Windows event loops
        signal.signal(signal.SIGINT, lambda *_: loop.call_soon_threadsafe(callback))


async def drive(runner: BatchRunner, url: str) -> int:
    """Runs the batch to its end; the first Ctrl-C turns it into ``runner.abort()``, a second one
    skips that cleanup."""
    batch = asyncio.create_task(runner.run())
    interrupted = asyncio.Event()

    def interrupt() -> None:
        interrupted.set()
        batch.cancel()

    on_sigint(interrupt)
    try:
        await batch
    except asyncio.CancelledError:
        if not interrupted.is_set():
            raise
    except (aiohttp.ClientError, asyncio.TimeoutError, ServerError) as e:
        echo(f"error: lost the server at {url}: {e or type(e).__name__}; run the same command again to resume")
        return EXIT_NOT_RUN
    else:
        return EXIT_ITEMS_FAILED if runner.summary.failed or runner.summary.interrupted else EXIT_OK
    echo("interrupted: cancelling this batch's prompts on the server (Ctrl-C again to skip)")
    cleanup = asyncio.create_task(runner.abort())
    on_sigint(cleanup.cancel)
    try:
        await cleanup
    except asyncio.CancelledError:
        echo("cleanup skipped: this batch's prompts may still be queued on the server")
    except (aiohttp.ClientError, asyncio.TimeoutError, ServerError) as e:
        echo(f"cleanup failed: {e or type(e).__name__}")
    return EXIT_INTERRUPTED


async def run_batch(args: argparse.Namespace) -> int:
    workflow = load_workflow(args.workflow)
    items = read_items(args.items)
    previous = read_results(args.results)
    async with aiohttp.ClientSession() as session:
        client = ComfyClient(session, args.url, args.client_id)
        try:
            await client.system_stats()
        except (aiohttp.ClientError, asyncio.TimeoutError, ServerError) as e:
            echo(f"error: cannot reach ComfyUI at {args.url}: {e or type(e).__name__}; is the server running?")
            return EXIT_NOT_RUN
        events = ExecutionEvents(session, client.ws_url)
        await events.start(WS_CONNECT_WAIT_S)
        log = ResultsLog(args.results)
        runner = BatchRunner(client, events, log, workflow=workflow, items=items, previous=previous,
                             out_dir=args.out, timeout_s=args.timeout, depth=args.concurrency, echo=echo)
        try:
            code = await drive(runner, args.url)
        finally:
            await events.stop()
            log.close()
        echo(runner.summary.line())
        return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(run_batch(args))
    except (WorkflowError, ItemsError) as e:
        echo(f"error: {e}")
        return EXIT_NOT_RUN
    except KeyboardInterrupt:  # Ctrl-C before the batch took over the signal
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
