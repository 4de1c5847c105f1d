"""How the batch client maps an item's overrides onto an API-format workflow (no server)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from comfy_batch.items import ItemsError, parse_item, read_items  # noqa: E402
from comfy_batch.overrides import (  # noqa: E402
    Assignment, OverrideError, apply_overrides, find_targets, parse_set_key, plan_overrides,
)


def t2i_workflow() -> dict:
    """A typical text-to-image graph: one prompt encoder, a sampler wired to a latent node."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "6": {"class_type": "LancePrompt", "inputs": {"prompt": "a cat", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "cfg": 7.0, "model": ["4", 0],
                                                  "positive": ["6", 0], "latent_image": ["5", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}},
    }


def test_named_overrides_find_their_single_literal_input():
    plan = plan_overrides(t2i_workflow(), {"prompt": "a dog", "seed": 5, "width": 640, "height": 320,
                                           "steps": 4, "cfg": 2.5}, {})
    assert {(a.target, a.value) for a in plan} == {
        ("6.prompt", "a dog"), ("3.seed", 5), ("5.width", 640), ("5.height", 320),
        ("3.steps", 4), ("3.cfg", 2.5)}
    assert not any(a.is_media for a in plan)


def test_alternative_input_names_are_matched():
    workflow = {
        "1": {"class_type": "CLIPTextEncode", "inputs": {"text": "hi", "clip": ["9", 0]}},
        "2": {"class_type": "KSamplerAdvanced", "inputs": {"noise_seed": 3}},
        "3": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"length": 25}},
        "4": {"class_type": "LoadVideo", "inputs": {"file": "in.mp4"}},
    }
    plan = plan_overrides(workflow, {"prompt": "yo", "seed": 8, "frames": 33, "video": "/abs/v.mp4"}, {})
    assert [(a.target, a.value, a.is_media) for a in plan] == [
        ("1.text", "yo", False), ("2.noise_seed", 8, False), ("3.length", 33, False),
        ("4.file", "/abs/v.mp4", True)]


def test_linked_inputs_are_never_targets():
    workflow = {"1": {"class_type": "A", "inputs": {"seed": ["2", 0]}},
                "2": {"class_type": "B", "inputs": {"seed": 11}}}
    assert find_targets(workflow, "seed") == [("2", "seed")]


def test_no_match_names_the_override_and_points_to_set():
    with pytest.raises(OverrideError) as e:
        plan_overrides(t2i_workflow(), {"frames": 17}, {})
    message = str(e.value)
    assert "'frames' matches no input" in message
    assert "'frames' or 'length' or 'num_frames'" in message
    assert '"set"' in message


def test_ambiguous_match_lists_every_candidate():
    workflow = {"6": {"class_type": "CLIPTextEncode", "inputs": {"text": "good"}},
                "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "bad"}}}
    with pytest.raises(OverrideError, match=r"'prompt' is ambiguous: it matches 6\.text, 7\.text; .*\"set\""):
        plan_overrides(workflow, {"prompt": "x"}, {})
    # ... and "set" resolves it
    plan = plan_overrides(workflow, {}, {"7.text": "blurry"})
    assert apply_overrides(workflow, plan)["7"]["inputs"]["text"] == "blurry"


def test_set_reaches_any_input_of_an_existing_node():
    plan = plan_overrides(t2i_workflow(), {}, {"3.sampler_name": "euler", "3.positive": ["5", 0]})
    result = apply_overrides(t2i_workflow(), plan)
    assert result["3"]["inputs"]["sampler_name"] == "euler"  # an input the workflow left out
    assert result["3"]["inputs"]["positive"] == ["5", 0]


def test_set_errors_name_the_bad_key():
    with pytest.raises(OverrideError, match=r"node '42', which the workflow does not have"):
        plan_overrides(t2i_workflow(), {}, {"42.seed": 1})
    with pytest.raises(OverrideError, match=r"must look like \"<node_id>.<input>\""):
        plan_overrides(t2i_workflow(), {}, {"seed": 1})


def test_two_overrides_for_one_input_are_refused():
    with pytest.raises(OverrideError, match=r"two overrides set 3\.seed"):
        plan_overrides(t2i_workflow(), {"seed": 1}, {"3.seed": 2})


def test_set_key_splits_at_the_last_dot():
    assert parse_set_key("12:3.seed") == ("12:3", "seed")
    assert parse_set_key("a.b.cfg") == ("a.b", "cfg")


def test_apply_leaves_the_workflow_untouched_and_refuses_unuploaded_media():
    workflow = t2i_workflow()
    before = json.dumps(workflow, sort_keys=True)
    result = apply_overrides(workflow, plan_overrides(workflow, {"seed": 99}, {}))
    assert result["3"]["inputs"]["seed"] == 99
    assert json.dumps(workflow, sort_keys=True) == before
    with pytest.raises(ValueError, match="upload it first"):
        apply_overrides(workflow, [Assignment("6", "prompt", "/tmp/x.png", is_media=True)])


@pytest.mark.parametrize("data, message", [
    ({"seed": "7"}, "'seed' must be an integer, got '7'"),
    ({"width": True}, "'width' must be an integer, got True"),
    ({"cfg": "high"}, "'cfg' must be a number"),
    ({"prompt": 3}, "'prompt' must be a string"),
    ({"sed": 1}, "unknown key(s) sed; allowed: id, set, prompt"),
    ({"set": [1]}, "'set' must be an object"),
    ({"image": "missing.png"}, "image file not found"),
])
def test_item_values_are_checked_before_anything_is_sent(tmp_path, data, message):
    item = parse_item({"id": "a", **data}, 1, tmp_path)
    assert item.id == "a"
    assert message in item.error


def test_item_id_defaults_to_line_and_must_be_a_folder_name(tmp_path):
    assert parse_item({}, 7, tmp_path).id == "7"
    assert parse_item({"id": 12}, 1, tmp_path).id == "12"
    bad = parse_item({"id": "../x"}, 4, tmp_path)
    assert bad.id == "4" and "not usable as a folder name" in bad.error


def test_read_items_resolves_media_against_the_items_file(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"png")
    items_file = tmp_path / "items.jsonl"
    items_file.write_text('{"id": "x", "image": "in/a.png", "seed": 3}\n\nnot json\n[1]\n')
    items = read_items(items_file)
    assert [(i.id, i.line) for i in items] == [("x", 1), ("3", 3), ("4", 4)]
    assert items[0].named == {"seed": 3, "image": str((tmp_path / "in" / "a.png").resolve())}
    assert items[0].error is None
    assert "line 3 is not valid JSON" in items[1].error
    assert "line 4 must be a JSON object, got list" in items[2].error


def test_duplicate_ids_stop_the_batch(tmp_path):
    items_file = tmp_path / "items.jsonl"
    items_file.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "a"}\n')
    with pytest.raises(ItemsError, match=r"'a' is used on lines 1 and 3"):
        read_items(items_file)


def test_prompt_id_depends_on_workflow_and_item_only(tmp_path):
    a = parse_item({"id": "a", "seed": 1}, 1, tmp_path)
    assert a.prompt_id("w1") == parse_item({"seed": 1, "id": "a"}, 9, tmp_path).prompt_id("w1")
    assert a.prompt_id("w1") != a.prompt_id("w2")
    assert a.prompt_id("w1") != parse_item({"id": "a", "seed": 2}, 1, tmp_path).prompt_id("w1")
    assert a.prompt_id("w1") != parse_item({"id": "b", "seed": 1}, 1, tmp_path).prompt_id("w1")
