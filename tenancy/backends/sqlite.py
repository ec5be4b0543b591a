"""SQLite: a server is a directory; a tenant database is ``<DIRECTORY>/<name>.sqlite3``."""

from __future__ import annotations

import contextlib
from pathlib import Path

from tenancy.backends.base import DatabaseServer
from tenancy.validators import validate_database_name

SUFFIX = ".sqlite3"
_COMPANIONS = ("-wal", "-shm", "-journal", ".migrate-lock")


class SQLiteServer(DatabaseServer):
    @property
    def directory(self) -> Path:
        return Path(self.template["DIRECTORY"])

    def path(self, name: str) -> Path:
        validate_database_name(name)
        return self.directory / f"{name}{SUFFIX}"

    def database_exists(self, name: str) -> bool:
        return self.path(name).exists()

    def create_database(self, name: str) -> bool:
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.touch(exist_ok=False)  # an empty file is an empty SQLite database
        except FileExistsError:
            return False
        return True

    def drop_database(self, name: str) -> bool:
        path = self.path(name)
        existed = path.exists()
        for companion in _COMPANIONS:
            with contextlib.suppress(FileNotFoundError):
                Path(f"{path}{companion}").unlink()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return existed

    def list_databases(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.name.removesuffix(SUFFIX) for p in self.directory.glob(f"*{SUFFIX}"))
