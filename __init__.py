"""ComfyUI entry point of the Lance node pack.

ComfyUI imports this folder as a package and reads two names. Exporting NODE_CLASS_MAPPINGS here
as well would make ComfyUI skip the V3 entry point, so nothing else is exported.
"""
import logging

WEB_DIRECTORY = "./js"


async def comfy_entrypoint():
    # Imported on call: the node modules need ComfyUI's comfy_api, while this file is also imported
    # without ComfyUI (pytest imports the package __init__ of the folder it collects from).
    try:
        from .nodes import LanceExtension
    except Exception:
        # ComfyUI reports an entry point error by its message only; the traceback says where.
        logging.exception("Lance nodes: importing the node modules failed")
        raise
    return LanceExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
