"""Files written under a private name beside their final one and linked into place when
complete (database copies, backups): a crash never leaves half a file under the final
name, and what a killed process left is removed by the next writer."""

from __future__ import annotations

import contextlib
import glob
import os
import threading
from pathlib import Path


def private_path(target: Path) -> Path:
    """A file of this thread's own beside ``target``: ``.<name>.<pid>.<thread>``."""
    return target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}")


def replace_file(target: Path, text: str) -> None:
    """Write ``target`` whole (readable by all, as a configuration file is): under a
    private name, then renamed over the old one."""
    remove_partial_files_of_dead_processes(target)
    partial = private_path(target)
    try:
        partial.write_text(text)
        partial.chmod(0o644)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def remove_partial_files_of_dead_processes(target: Path, pattern: str | None = None) -> None:
    """Remove the private files of ``target`` (or of every file whose name matches the
    glob ``pattern`` in its directory) that processes no longer running left behind."""
    names = glob.escape(target.name) if pattern is None else pattern
    for leftover in target.parent.glob(f".{names}.*"):
        owner = leftover.name.rsplit(".", 2)
        if len(owner) == 3 and owner[1].isdigit() and not _process_exists(int(owner[1])):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's
        return True
    return True
