"""Reading one ``GET /history/{prompt_id}`` entry: how the run ended and which files it wrote."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    status: str  # "success" | "error" | "interrupted"
    error: str | None


@dataclass(frozen=True)
class FileRef:
    """An output file as ``GET /view`` wants it named."""
    node_id: str
    filename: str
    subfolder: str
    type: str

    @property
    def query(self) -> dict:
        return {"filename": self.filename, "subfolder": self.subfolder, "type": self.type}


def is_finished(entry: dict | None) -> bool:
    # The server stores the entry once the run is over; "status" is always set then.
    return bool(entry) and isinstance(entry.get("status"), dict)


def outcome_of(entry: dict) -> Outcome:
    """The run's end, from the last execution message; ``status_str`` alone cannot tell an
    interrupt from a node error."""
    status = entry["status"]
    for name, data in reversed(status.get("messages") or []):
        if name == "execution_success":
            return Outcome("success", None)
        if name == "execution_interrupted":
            return Outcome("interrupted", f"interrupted at node {data.get('node_id')} ({data.get('node_type')})")
        if name == "execution_error":
            return Outcome("error", f"node {data.get('node_id')} ({data.get('node_type')}) raised "
                                    f"{data.get('exception_type')}: {data.get('exception_message')}")
    if status.get("status_str") == "success":
        return Outcome("success", None)
    return Outcome("error", f"the server ended the run with status {status.get('status_str')!r} "
                            "and no error message")


def output_files(entry: dict) -> list[FileRef]:
    """Every file any output node reported, whatever the key ("images", "gifs", "videos",
    "audio", ...): each is a dict with at least a filename."""
    refs = []
    for node_id, ui in (entry.get("outputs") or {}).items():
        for values in ui.values():
            if not isinstance(values, list):
                continue
            for value in values:
                if isinstance(value, dict) and isinstance(value.get("filename"), str):
                    refs.append(FileRef(node_id, value["filename"], value.get("subfolder", "") or "",
                                        value.get("type", "output") or "output"))
    return refs
