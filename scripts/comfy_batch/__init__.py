"""Batch client for ComfyUI's HTTP API: queue one API-format workflow many times with per-item
overrides, follow each run over the websocket, download its outputs, and log one JSON line per item.
The command-line entry point is ``scripts/lance_batch.py``."""
