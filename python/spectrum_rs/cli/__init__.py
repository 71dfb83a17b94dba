"""The ``spectrum-rs`` command line (:mod:`.main`: parser and exit codes; :mod:`.commands`:
what each command does)."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
