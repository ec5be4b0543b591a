"""PostgreSQL's client programs (``pg_dump``, ``pg_restore``), run for moves, backups and
restores: found, started and ended cleanly, their errors read back as one line."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from tenancy.exceptions import TenancyError


def client_program(name: str) -> str:
    """PostgreSQL's client program ``name``: from PATH, else the newest of Debian's
    ``/usr/lib/postgresql/<version>/bin``."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0,
    )
    if versions:
        return str(versions[-1])
    raise TenancyError(
        f"{name} was not found: install PostgreSQL's client programs (Debian: "
        "postgresql-client) of the servers' version or newer, or put them on PATH"
    )


@contextmanager
def reaped(process: subprocess.Popen[bytes]) -> Iterator[None]:
    """End ``process`` if the block leaves before it ended."""
    try:
        yield
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def first_lines(errors: IO[bytes], lines: int = 3) -> str:
    """What a program wrote to ``errors`` (a file), its first lines on one line."""
    errors.seek(0)
    text = errors.read().decode(errors="replace").strip().splitlines()
    return " / ".join(text[:lines]) or "no message"


def check_exit(program: str, process: subprocess.Popen[bytes], errors: IO[bytes]) -> None:
    """``TenancyError`` with the program's first error lines when it failed."""
    if process.returncode:
        raise TenancyError(f"{program} failed: {first_lines(errors)}")
