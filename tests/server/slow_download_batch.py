"""scripts/lance_batch.py with its downloads slowed to a crawl (small chunks, a pause before each), so a
test can kill it with SIGKILL while a file is being written. Same arguments as lance_batch.py."""
from __future__ import annotations

import asyncio
import runpy
import sys
from pathlib import Path

import aiohttp

BATCH_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "lance_batch.py"
CHUNK_BYTES, PAUSE_S = 256, 0.05


async def _slow_chunks(stream: aiohttp.StreamReader):
    while chunk := await stream.read(CHUNK_BYTES):
        await asyncio.sleep(PAUSE_S)
        yield chunk


if __name__ == "__main__":
    aiohttp.StreamReader.iter_chunked = lambda self, n: _slow_chunks(self)
    sys.path.insert(0, str(BATCH_SCRIPT.parent))
    sys.argv[0] = str(BATCH_SCRIPT)
    runpy.run_path(str(BATCH_SCRIPT), run_name="__main__")
