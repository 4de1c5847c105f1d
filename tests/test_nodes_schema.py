"""The node pack's public surface: ids, widget order, tooltips and descriptions. Saved workflows store
widget values by position and nodes by id, so both are frozen once shipped."""
from __future__ import annotations

import pytest
from pack_import import node_classes

# Node ids of other Lance packs (NODES.md): ours must never collide with them.
PEER_NODE_IDS = {
    "LanceModelLoader", "LanceLoadModel", "LanceImageEdit", "LanceVideoEdit", "LanceImageUnderstanding",
    "LanceVideoUnderstanding", "LanceTextToVideo", "LanceTextToImage", "LanceUnloadModel", "LanceT2I", "LanceT2V",
    "LanceX2TImage", "LanceX2TVideo", "LanceImageGeneration", "LanceImageEditing", "LanceImageToVideo",
    "LanceVideoEditing", "LanceFramesToVideo", "LanceLoader", "LanceArgs", "LanceConfigure", "LanceGeneration",
    "LanceUnderstanding", "LanceTextPrompt", "LanceTokenizerLoader",
}

# The shipped widget order of every node (NODES.md); only appending is allowed.
INPUT_ORDER = {
    "LanceCheckpointLoader": ["checkpoint", "weight_dtype", "attention", "vision_tower", "download_missing"],
    "LanceTextEncode": ["model", "prompt", "task"],
    "LanceEmptyLatent": ["width", "height", "frames"],
    "LanceImageToVideoLatent": ["vae", "start_image", "frames", "resolution"],
    "LanceSampler": ["model", "cond", "latent", "seed", "steps", "cfg", "shift", "cfg_start", "cfg_end", "renorm",
                     "noise"],
    "LanceEditEncode": ["model", "vae", "image", "instruction", "kind", "fps", "resolution"],
    "LanceCaptioner": ["model", "image", "question", "kind", "fps", "resolution", "instruction", "max_new_tokens",
                       "sampling", "temperature", "top_p", "seed"],
}
OUTPUT_TYPES = {
    "LanceCheckpointLoader": ["LANCE_MODEL"], "LanceTextEncode": ["LANCE_COND"], "LanceEmptyLatent": ["LATENT"],
    "LanceImageToVideoLatent": ["LATENT"], "LanceSampler": ["LATENT"], "LanceEditEncode": ["LANCE_COND", "LATENT"],
    "LanceCaptioner": ["STRING"],
}


@pytest.fixture(scope="module")
def schemas():
    return {node_id: cls.GET_SCHEMA() for node_id, cls in node_classes().items()}


def test_the_pack_declares_exactly_the_designed_nodes(schemas):
    assert sorted(schemas) == sorted(INPUT_ORDER)


def test_no_node_id_collides_with_other_lance_packs(schemas):
    assert not set(schemas) & PEER_NODE_IDS
    assert all(node_id.startswith("Lance") for node_id in schemas)


@pytest.mark.parametrize("node_id", sorted(INPUT_ORDER))
def test_widget_order_and_output_types_are_the_shipped_ones(schemas, node_id):
    schema = schemas[node_id]
    assert [i.id for i in schema.inputs] == INPUT_ORDER[node_id]
    assert [o.get_io_type() for o in schema.outputs] == OUTPUT_TYPES[node_id]


@pytest.mark.parametrize("node_id", sorted(INPUT_ORDER))
def test_every_input_output_and_node_is_described(schemas, node_id):
    schema = schemas[node_id]
    assert schema.category.startswith("Lance/")
    assert schema.display_name and len(schema.description) > 40
    undocumented = [i.id for i in schema.inputs if not (i.tooltip and len(i.tooltip) > 15)]
    assert not undocumented, f"{node_id}: inputs without a tooltip: {undocumented}"
    for output in schema.outputs:
        assert output.display_name and output.tooltip, f"{node_id}: output {output.io_type} lacks name or tooltip"
