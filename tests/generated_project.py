"""Projects a test writes into a temporary directory, laid out as a newcomer's would be,
and whose ``manage.py`` commands it runs in processes of their own."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def project_environment(directory: Path, settings_module: str) -> dict[str, str]:
    """The environment of a process that runs the project in ``directory``."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": settings_module,
        "PYTHONPATH": os.pathsep.join([str(directory), str(ROOT)]),
    }


def run_manage(
    directory: Path, settings_module: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """``manage.py ARGS`` for the project, in a process of its own, whatever its outcome."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=project_environment(directory, settings_module),
        capture_output=True,
        text=True,
    )


def manager(directory: Path, settings_module: str) -> Callable[..., str]:
    """``manage(*args)``: the output of ``manage.py ARGS`` for the project, which must
    succeed (the assertion shows its output otherwise)."""

    def manage(*args: str) -> str:
        done = run_manage(directory, settings_module, *args)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    return manage
