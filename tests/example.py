"""The example project run as its users run it: `manage.py` in a subprocess, on SQLite files
in a temporary directory or, on the PostgreSQL backend, on the two test clusters."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from tests.settings import BACKEND

ROOT = Path(__file__).resolve().parent.parent
MAIN_DATABASE = "tenancy_example"

# Run by the example's own `manage.py shell`, so that the test process needs no database.
SERVER = "from django.conf import settings\nfrom tenancy.backends import get_server"
LIST_TENANT_DATABASES = """
for name in settings.TENANCY["SERVERS"]:
    databases = get_server(name).list_databases()
    print(name, *[d for d in databases if d.startswith("example_tenant_")])
"""
# tenancy refuses to drop the main database: it goes through the maintenance database.
DROP_DATABASES = f"""
from psycopg import sql
for name in settings.TENANCY["SERVERS"]:
    for database in get_server(name).list_databases():
        if database.startswith("example_tenant_"):
            get_server(name).drop_database(database, allow_template=True)
with get_server("main")._cursor() as cursor:
    query = sql.SQL("DROP DATABASE IF EXISTS {{}} WITH (FORCE)").format(
        sql.Identifier({MAIN_DATABASE!r})
    )
    cursor.execute(query.as_string(cursor.connection))
"""


class FailedCommand(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"{super().__str__()}\n--- stdout:\n{self.stdout}\n--- stderr:\n{self.stderr}"


class ExampleProject:
    """One set-up of the example project. On PostgreSQL its main database and the tenants'
    databases live on the test clusters (beta and later tenants can go to the second)."""

    def __init__(self, data_dir: Path, postgres: bool, second_server: str = "") -> None:
        self.data_dir = data_dir
        self.postgres = postgres
        self.env = {"TENANCY_EXAMPLE_DATA": str(data_dir), "PATH": "/usr/bin:/bin"}
        if postgres:
            self.env["TENANCY_EXAMPLE_POSTGRES"] = os.environ["TENANCY_TEST_PG_1"]
            self.env["TENANCY_EXAMPLE_POSTGRES_2"] = (
                second_server or os.environ["TENANCY_TEST_PG_2"]
            )

    def manage(self, *args: str) -> str:
        """The output of `manage.py ARGS`; CalledProcessError (with the output in its
        message) when it fails."""
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode:
            raise FailedCommand(done.returncode, done.args, done.stdout, done.stderr)
        return done.stdout

    def popen(self, *args: str, capture: bool = False) -> subprocess.Popen[str]:
        """`manage.py ARGS` started, not waited for; its output is discarded unless
        CAPTURE (then read it with ``communicate()``)."""
        output = subprocess.PIPE if capture else subprocess.DEVNULL
        return subprocess.Popen(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            stdout=output,
            stderr=output,
            text=True,
        )

    def registry(self) -> dict[str, tuple[str, str, str]]:
        """Each registered tenant's status, server and database name, read straight from
        the main database (cheap enough to poll while a command runs)."""
        query = "SELECT slug, status, server, database_name FROM tenancy_tenant"
        if self.postgres:
            import psycopg

            host, _, port = self.env["TENANCY_EXAMPLE_POSTGRES"].rpartition(":")
            connection = psycopg.connect(
                host=host, port=port, user="postgres", dbname=MAIN_DATABASE, autocommit=True
            )
            with connection:
                rows = connection.execute(query).fetchall()
        else:
            with closing(sqlite3.connect(self.data_dir / "main.sqlite3", timeout=30)) as db:
                rows = db.execute(query).fetchall()
        return {slug: (status, server, database) for slug, status, server, database in rows}

    def shell(self, code: str) -> str:
        return self.manage("shell", "--verbosity", "0", "-c", code)

    def set_up(self) -> None:
        """What `make demo` does before it serves."""
        if self.postgres:  # Django's migrate does not create databases
            self.shell(f"{SERVER}\nget_server('main').create_database({MAIN_DATABASE!r})")
        self.manage("migrate", "--verbosity", "0")
        self.manage("seed_demo")

    def tenant_databases(self) -> dict[str, set[str]]:
        """The tenant databases that exist, by the example's server names ("main",
        "second"), as the example project itself sees them."""
        lines = self.shell(f"{SERVER}\n{LIST_TENANT_DATABASES}").splitlines()
        return {server: set(databases) for server, *databases in map(str.split, lines)}

    def tear_down(self) -> None:
        if self.postgres:
            self.shell(f"{SERVER}\n{DROP_DATABASES}")

    @contextmanager
    def serve(self, server: str = "runserver") -> Iterator[int]:
        """The example served on a free port of 127.0.0.1 until the block ends, by
        `manage.py runserver`, gunicorn (WSGI, threads) or uvicorn (ASGI)."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        address = f"127.0.0.1:{port}"
        command = {
            "runserver": ["manage.py", "runserver", address, "--noreload"],
            "gunicorn": [
                *("-m", "gunicorn", "example_project.wsgi:application", "--bind", address),
                *("--workers", "2", "--threads", "8", "--worker-class", "gthread"),
            ],
            "uvicorn": [
                *("-m", "uvicorn", "example_project.asgi:application", "--host", "127.0.0.1"),
                *("--port", str(port), "--no-access-log"),
            ],
        }[server]
        log = (self.data_dir / f"{server}.log").open("w")
        process = subprocess.Popen(
            [sys.executable, *command],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_until_serving(port, process)
            yield port
        finally:
            process.terminate()
            process.wait(timeout=30)
            log.close()


def _wait_until_serving(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
            return
        except urllib.error.HTTPError:  # any answer means it serves
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the server did not answer on port {port} within 60 s")


@contextmanager
def example_project(
    data_dir: Path, postgres: bool = BACKEND == "postgresql", second_server: str = ""
) -> Iterator[ExampleProject]:
    """The example set up in DATA_DIR, its databases dropped afterwards; on PostgreSQL
    its second server can be another than the suite's second cluster."""
    project = ExampleProject(data_dir, postgres, second_server)
    try:
        yield project
    finally:
        project.tear_down()
