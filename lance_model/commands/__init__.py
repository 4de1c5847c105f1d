"""Subcommands of ``python -m lance_model`` (see ``lance_model/cli.py``)."""
