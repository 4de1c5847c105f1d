"""The batch client's bookkeeping without a server: results log and resume, reading history
entries and validation errors, naming downloaded files."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from comfy_batch.client import rejection_message  # noqa: E402
from comfy_batch.events import ExecutionEvents  # noqa: E402
from comfy_batch.history import FileRef, is_finished, outcome_of, output_files  # noqa: E402
from comfy_batch.results import Result, ResultsLog, is_done, read_results  # noqa: E402
from comfy_batch.runner import Summary, local_names  # noqa: E402
from comfy_batch.workflow import WorkflowError, load_workflow, workflow_hash  # noqa: E402


def test_log_round_trip_keeps_the_last_record_per_item(tmp_path):
    path = tmp_path / "r" / "results.jsonl"
    log = ResultsLog(path)
    log.append(Result("a", "p1", "error", error="boom", seconds=1.23456))
    log.append(Result("b", "p2", "invalid", error="bad", node_errors={"1": {"errors": []}}))
    log.append(Result("a", "p1", "success", outputs=["/x.png"]))
    log.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {"id": "a", "prompt_id": "p1", "status": "error", "outputs": [], "error": "boom",
                        "seconds": 1.235}
    assert "node_errors" in lines[1] and "node_errors" not in lines[2]
    latest = read_results(path)
    assert latest["a"]["status"] == "success" and latest["b"]["status"] == "invalid"


def test_unknown_status_is_refused(tmp_path):
    log = ResultsLog(tmp_path / "r.jsonl")
    with pytest.raises(ValueError, match="unknown status 'done'"):
        log.append(Result("a", "p", "done"))
    log.close()


def test_a_line_cut_short_is_skipped_and_not_glued_to_the_next(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"id": "a", "prompt_id": "p", "status": "success", "outputs": []}\n{"id": "b", "sta')
    assert list(read_results(path)) == ["a"]
    log = ResultsLog(path)
    log.append(Result("c", "p3", "success"))
    log.close()
    assert sorted(read_results(path)) == ["a", "c"]


def test_missing_results_file_means_nothing_done(tmp_path):
    assert read_results(tmp_path / "none.jsonl") == {}


def test_is_done_needs_success_same_prompt_and_every_file(tmp_path):
    kept = tmp_path / "kept.png"
    kept.write_bytes(b"x")
    record = {"id": "a", "prompt_id": "p", "status": "success", "outputs": [str(kept)]}
    assert is_done(record, "p")
    assert not is_done(record, "other-workflow-or-overrides")
    assert not is_done({**record, "status": "error"}, "p")
    assert not is_done({**record, "outputs": [str(kept), str(tmp_path / "gone.png")]}, "p")
    assert not is_done(None, "p")


def history_entry(*messages, status_str="success", outputs=None) -> dict:
    return {"prompt": [0, "p", {}, {}, []], "outputs": outputs or {},
            "status": {"status_str": status_str, "completed": status_str == "success",
                       "messages": [list(m) for m in messages]}}


def test_outcome_reads_the_last_execution_message():
    start = ("execution_start", {"prompt_id": "p"})
    assert outcome_of(history_entry(start, ("execution_success", {}))).status == "success"
    interrupted = outcome_of(history_entry(start, ("execution_interrupted", {"node_id": "7", "node_type": "Slow"}),
                                           status_str="error"))
    assert (interrupted.status, interrupted.error) == ("interrupted", "interrupted at node 7 (Slow)")
    failed = outcome_of(history_entry(start, ("execution_error", {
        "node_id": "3", "node_type": "KSampler", "exception_type": "RuntimeError",
        "exception_message": "out of memory"}), status_str="error"))
    assert (failed.status, failed.error) == ("error", "node 3 (KSampler) raised RuntimeError: out of memory")
    assert outcome_of(history_entry(status_str="error")).status == "error"


def test_is_finished_needs_a_status():
    assert is_finished(history_entry())
    assert not is_finished(None) and not is_finished({}) and not is_finished({"outputs": {}})


def test_output_files_collects_every_file_list_and_ignores_text():
    entry = history_entry(outputs={
        "9": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}], "animated": [False]},
        "12": {"gifs": [{"filename": "v.mp4", "subfolder": "vid", "type": "output", "format": "video/h264-mp4"}],
               "text": ["a caption"]},
        "14": {"audio": [{"filename": "s.flac", "type": "temp"}]},
    })
    assert output_files(entry) == [FileRef("9", "a.png", "", "output"), FileRef("12", "v.mp4", "vid", "output"),
                                   FileRef("14", "s.flac", "", "temp")]
    assert FileRef("12", "v.mp4", "vid", "output").query == {"filename": "v.mp4", "subfolder": "vid",
                                                             "type": "output"}


def test_local_names_are_unique_and_never_leave_the_folder():
    refs = [FileRef("1", "a.png", "", "output"), FileRef("2", "a.png", "x", "output"),
            FileRef("3", "a.png", "", "temp"), FileRef("4", "../b.png", "", "output")]
    assert local_names(refs) == ["a.png", "a-2.png", "a-3.png", "b.png"]


def test_rejection_message_names_node_input_and_reason():
    body = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                      "details": "", "extra_info": {}},
            "node_errors": {"1": {"errors": [{"type": "value_bigger_than_max",
                                              "message": "Value 20000 bigger than max of 16384", "details": "width"}],
                                  "class_type": "EmptyImage"}}}
    assert rejection_message(body) == ("Prompt outputs failed validation: node 1 (EmptyImage) width: "
                                       "Value 20000 bigger than max of 16384")
    unknown = {"error": {"type": "invalid_prompt", "message": "Cannot execute because node X does not exist.",
                         "details": "Node ID '#1'"}, "node_errors": {}}
    assert rejection_message(unknown) == "Cannot execute because node X does not exist. (Node ID '#1')"


def test_summary_line_counts_each_status():
    summary = Summary(skipped=2)
    for status in ("success", "success", "invalid", "error", "interrupted"):
        summary.count(status)
    assert summary.line() == "batch: 2 succeeded, 2 failed, 2 skipped, 1 interrupted"
    assert Summary(succeeded=19, failed=1).line() == "batch: 19 succeeded, 1 failed, 0 skipped"


def test_workflow_loading_rejects_ui_format_and_hash_ignores_formatting(tmp_path):
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": []}))
    with pytest.raises(WorkflowError, match=r"UI-format workflow; save it in API format"):
        load_workflow(ui)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"1": {"inputs": {}}}))
    with pytest.raises(WorkflowError, match=r"node '1' must be an object with a string 'class_type'"):
        load_workflow(bad)
    api = tmp_path / "api.json"
    api.write_text('{"1": {"class_type": "A", "inputs": {"b": 1, "a": 2}}}')
    assert workflow_hash(load_workflow(api)) == workflow_hash({"1": {"inputs": {"a": 2, "b": 1}, "class_type": "A"}})
    assert workflow_hash(load_workflow(api)) != workflow_hash({"1": {"class_type": "A", "inputs": {"a": 2, "b": 2}}})


def test_events_mark_a_prompt_ended_only_on_its_end_messages():
    events = ExecutionEvents(session=None, ws_url="ws://unused")
    for message in ({"type": "execution_start", "data": {"prompt_id": "a"}},
                    {"type": "executing", "data": {"node": "3", "prompt_id": "a"}},
                    {"type": "progress", "data": {"value": 1, "max": 2, "prompt_id": "a", "node": "3"}},
                    {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 1}}}}):
        events.handle(json.dumps(message))
    events.handle("not json")
    assert not events.ended("a").is_set()
    events.handle(json.dumps({"type": "execution_interrupted", "data": {"prompt_id": "a", "node_id": "3"}}))
    events.handle(json.dumps({"type": "executing", "data": {"node": None, "prompt_id": "b"}}))
    assert events.ended("a").is_set() and events.ended("b").is_set()
    assert not events.ended("c").is_set()
