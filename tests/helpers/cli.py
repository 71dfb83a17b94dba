"""The command line as a user runs it: ``python -m spectrum_rs ...`` in a subprocess, with
the test's interpreter and the test process's environment (plus what a test adds)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Dict, Iterable, List, Optional


def command(*args) -> List[str]:
    """The argv of ``python -m spectrum_rs ARGS`` (paths and numbers become strings)."""
    return [sys.executable, "-m", "spectrum_rs", *map(str, args)]


def run_cli(
    *args,
    cwd=None,
    env: Optional[Dict[str, str]] = None,
    unset: Iterable[str] = (),
    check: bool = True,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """Runs ``python -m spectrum_rs ARGS`` and captures its output as text. ``env`` is
    added to this process's environment, ``unset`` is removed from it; ``check``: a
    non-zero exit fails the test with both outputs."""
    e = dict(os.environ, **(env or {}))
    for name in unset:
        e.pop(name, None)
    p = subprocess.run(command(*args), cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p
