"""``python -m lance_model <command>``: developer tools around the model files.

Each command lives in ``lance_model/commands/<name>.py`` and contributes a ``register(subparsers)``
that adds its parser and sets ``func`` (``args -> exit code``); adding a command means adding one
module and listing it in ``COMMANDS``.
"""
from __future__ import annotations

import argparse
import sys

from .checkpoint import CheckpointError
from .comfy_lookup import ComfyNotFound
from .commands import inspect_models, keys, run, tiny_checkpoint
from .config import ConfigError
from .tokenizer import TokenizerError

COMMANDS = (keys, inspect_models, tiny_checkpoint, run)
# Problems with the user's files or environment: reported as one line, not a traceback.
USER_ERRORS = (CheckpointError, ConfigError, TokenizerError, ComfyNotFound)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lance_model", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
