"""The results log: one JSON line per finished item, appended and flushed as it happens, so a
batch that dies keeps everything it finished and a rerun knows what to skip."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATUSES = ("success", "error", "interrupted", "invalid")


@dataclass
class Result:
    id: str
    prompt_id: str
    status: str
    outputs: list = field(default_factory=list)  # absolute paths of the downloaded files
    error: str | None = None
    node_errors: dict | None = None  # the server's per-node validation errors, for "invalid"
    seconds: float = 0.0

    def to_json(self) -> str:
        record = asdict(self)
        record["seconds"] = round(self.seconds, 3)
        if record["node_errors"] is None:
            del record["node_errors"]
        return json.dumps(record, ensure_ascii=False)


def read_results(path: Path) -> dict[str, dict]:
    """The last record of each item id. Lines that do not parse (a write cut short by a crash)
    are skipped: the item they describe simply runs again."""
    latest: dict[str, dict] = {}
    if not Path(path).is_file():
        return latest
    with open(path, encoding="utf-8") as f:
        for text in f:
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("id"), str):
                latest[record["id"]] = record
    return latest


def is_done(record: dict | None, prompt_id: str) -> bool:
    """Finished earlier with this very workflow and overrides, and its files are still there."""
    if not record or record.get("status") != "success" or record.get("prompt_id") != prompt_id:
        return False
    outputs = record.get("outputs")
    return isinstance(outputs, list) and all(isinstance(p, str) and Path(p).is_file() for p in outputs)


def _ends_mid_line(path: Path) -> bool:
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


class ResultsLog:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ends_mid_line = _ends_mid_line(self.path)
        self._file = open(self.path, "a", encoding="utf-8")
        if ends_mid_line:  # a crash cut the last line short: do not glue the next record onto it
            self._file.write("\n")

    def append(self, result: Result) -> None:
        if result.status not in STATUSES:
            raise ValueError(f"unknown status {result.status!r}")
        self._file.write(result.to_json() + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
