"""The pack registers with a real ComfyUI: every node its extension declares is served by
/object_info as part of the pack, and the server log shows the pack imported without error."""
from __future__ import annotations

import asyncio

from pack_import import pack_module


def declared_node_ids() -> list[str]:
    """The node ids of the extension that the pack's comfy_entrypoint hands to ComfyUI."""
    extension = asyncio.run(pack_module().comfy_entrypoint())
    return [node_class.GET_SCHEMA().node_id for node_class in asyncio.run(extension.get_node_list())]


def test_server_serves_exactly_the_declared_nodes_under_the_pack(comfy_server):
    declared = declared_node_ids()
    assert declared, "the pack's extension declares no nodes: nodes/__init__.py NODE_CLASSES is empty"
    assert len(set(declared)) == len(declared), f"node ids declared twice: {declared}"

    object_info = comfy_server.get_json("/object_info")
    missing = sorted(set(declared) - object_info.keys())
    assert not missing, f"declared by the pack but not served by ComfyUI: {missing}"
    served_by_pack = sorted(node_id for node_id, info in object_info.items()
                            if info["python_module"] == comfy_server.python_module)
    assert served_by_pack == sorted(declared)


def test_server_log_shows_the_pack_imported_cleanly(comfy_server):
    log = comfy_server.log_text()
    marker = "Import times for custom nodes:"
    assert marker in log, "the server log has no custom node import summary"
    pack_path = f"/custom_nodes/{comfy_server.pack_name}"
    pack_lines = [line for line in log.split(marker, 1)[1].splitlines() if line.endswith(pack_path)]
    assert len(pack_lines) == 1, f"expected one import line for {pack_path}, found {pack_lines}"
    assert "IMPORT FAILED" not in pack_lines[0]
    # ComfyUI's loader reports a broken pack with one of these, naming the pack's folder.
    complaints = [line for line in log.splitlines() if pack_path in line
                  and any(word in line for word in ("Cannot import", "comfy_entrypoint in", "Skip "))]
    assert not complaints
