"""Pure-PyTorch implementation of ByteDance Lance.

Nothing in this package imports ComfyUI node, server or ``comfy_api`` code; ComfyUI's
``comfy`` package is only looked up lazily (for the Wan 2.2 VAE and ``comfy.ops``).
"""
