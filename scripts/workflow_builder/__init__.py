"""Builds the shipped example workflows (UI format + API-format twin) from one graph description each.

The widget order of every node comes from a live server's ``/object_info``, so the files always match
the nodes they use. ``scripts/build_workflows.py`` is the command line.
"""
