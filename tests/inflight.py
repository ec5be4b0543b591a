"""Queries and requests in flight while their tenant is removed.

Views for tests that remove a tenant while one of its requests runs (``ROOT_URLCONF =
"tests.inflight"``, ``request_paused_in_view``), and scenarios run in a Python process
of their own
(``run_in_subprocess``): code that closes another thread's SQLite connection under its
running query kills the process with SIGSEGV, and the test suite must survive to say so.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client
from django.urls import path

from tenancy import tenant_connection
from tests.tenantapp.models import Note

ROOT = Path(__file__).resolve().parent.parent

# Statements that keep a tenant's database busy for a while, then return 300000. SQLite's
# calls started() when it begins, where the scenario has defined it.
SLOW_QUERY = {
    "sqlite": (
        "WITH RECURSIVE c(x) AS (SELECT {start} UNION ALL SELECT x + 1 FROM c WHERE x < 300000)"
        " SELECT count(*) FROM c"
    ),
    "postgresql": "SELECT 300000 FROM pg_sleep({seconds})",
}


def slow_query(vendor: str, *, start: str = "1", seconds: float = 0.3) -> str:
    return SLOW_QUERY[vendor].format(start=start, seconds=seconds)


class Pause:
    """Where a view waits for its test: ``reached`` is set when the view gets there, and
    the view goes on once the test sets ``resume``."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.resume = threading.Event()

    def __call__(self) -> None:
        self.reached.set()
        if not self.resume.wait(timeout=60):
            raise RuntimeError("The test never resumed the view.")


pause = Pause()  # request_paused_in_view() installs a fresh one


@contextmanager
def request_paused_in_view(path_info: str, host: str) -> Iterator[list[HttpResponse]]:
    """Send a GET for one of the views above in another thread; the body of the
    ``with`` block runs while the view waits at its pause, and the view goes on when the
    block ends. Yields the list the response is in after the block. The test sets
    ``ROOT_URLCONF = "tests.inflight"``."""
    global pause
    pause = mine = Pause()
    responses: list[HttpResponse] = []

    def send() -> None:
        try:
            client = Client(raise_request_exception=False)
            responses.append(client.get(path_info, HTTP_HOST=host))
        finally:
            connections.close_all()  # the test client leaves the main database's open

    thread = threading.Thread(target=send)
    thread.start()
    try:
        while not mine.reached.wait(timeout=0.05):
            assert thread.is_alive(), f"The request ended before its view paused: {responses}"
        yield responses
    finally:
        mine.resume.set()
        thread.join(timeout=60)


def cursor_across_pause(request: HttpRequest) -> HttpResponse:
    """A statement on the tenant's connection, the pause, another on the same cursor."""
    with tenant_connection().cursor() as cursor:
        cursor.execute("SELECT 1")
        pause()
        cursor.execute("SELECT 1")
    return HttpResponse("done")


def orm_across_pause(request: HttpRequest) -> HttpResponse:
    """A query through the router, the pause, another query through the router."""
    Note.objects.count()
    pause()
    return JsonResponse({"notes": Note.objects.count()})


def _nothing() -> None:
    pass


# Called by slow_notes once its slow statement runs (SQLite) or is about to (PostgreSQL),
# and once it returned.
slow_statement_started: Callable[[], None] = _nothing
slow_statement_done: Callable[[], None] = _nothing


def slow_notes(request: HttpRequest) -> HttpResponse:
    """The tenant's notes, after a statement that keeps its database busy for a while and
    another on the same cursor."""
    connection = tenant_connection()
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            connection.connection.create_function(
                "started", 0, lambda: slow_statement_started() or 1
            )
            cursor.execute(slow_query("sqlite", start="started()"))
        else:
            slow_statement_started()
            cursor.execute(slow_query("postgresql"))
        slow_statement_done()
        cursor.execute("SELECT 1")
    return JsonResponse({"notes": list(Note.objects.values_list("text", flat=True))})


urlpatterns = [
    path("cursor-across-pause/", cursor_across_pause),
    path("orm-across-pause/", orm_across_pause),
    path("slow-notes/", slow_notes),
]


# Scenarios in a process of their own.


def run_in_subprocess(scenario: str, **arguments: Any) -> Any:
    """Run ``scenario`` (a function below) with the suite's settings and backend in a
    new Python process; returns what it returned. Fails naming the signal that ended the
    process, if one did."""
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "TENANCY_SCENARIO": json.dumps({"scenario": scenario, **arguments}),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); import tests.inflight as i; i.main()",
        ],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode < 0:
        ending = f"killed by {signal.Signals(-done.returncode).name}"
    else:
        ending = f"exit status {done.returncode}"
    assert done.returncode == 0, f"The scenario's process ended with {ending}:\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    """In the scenario's process, once Django is set up."""
    arguments = json.loads(os.environ["TENANCY_SCENARIO"])
    scenario = SCENARIOS[arguments.pop("scenario")]
    print(json.dumps(scenario(**arguments)), flush=True)


def queries_while_unregistered(database: str, threads: int, rounds: int) -> dict[str, Any]:
    """In each round, ``threads`` threads each run a long statement on one tenant's
    database, and ``unregister`` runs once every one of them is inside its statement.
    Each thread then runs another statement on the same connection and reaches a safe
    point. Returns what each thread saw, and what was still open at the end."""
    from django.db import DatabaseError, connections

    from tenancy.backends import get_server
    from tenancy.connections import (
        alias_for,
        attached_aliases,
        close_old_connections,
        open_connection_count,
        unregister,
    )
    from tenancy.exceptions import TenantRemoved
    from tenancy.models import Tenant
    from tests.settings import BACKEND as vendor

    tenant = Tenant(slug="midquery", server="one", database_name=database)
    server = get_server("one")
    server.create_database(database)
    seen: list[dict[str, Any]] = []

    def serve(started: threading.Event) -> None:
        wrapper = connections[alias_for(tenant)]
        record: dict[str, Any] = {}
        try:
            with wrapper.cursor() as cursor:
                if vendor == "sqlite":
                    wrapper.connection.create_function("started", 0, lambda: started.set() or 1)
                cursor.execute(slow_query(vendor, start="started()"))
                record["query"] = f"result {cursor.fetchone()[0]}"
        except DatabaseError as exc:
            record["query"] = f"error {type(exc).__name__}"
        except Exception as exc:
            record["query"] = f"unexpected {exc!r}"
        try:
            with wrapper.cursor() as cursor:
                cursor.execute("SELECT 1")
            record["next statement"] = "ran"
        except TenantRemoved:
            record["next statement"] = "TenantRemoved"
        except Exception as exc:
            record["next statement"] = repr(exc)
        close_old_connections()
        record["open after its safe point"] = wrapper.connection is not None
        record["attached after its safe point"] = attached_aliases()
        seen.append(record)

    try:
        for _ in range(rounds):
            events = [threading.Event() for _ in range(threads)]
            workers = [threading.Thread(target=serve, args=(event,)) for event in events]
            for worker in workers:
                worker.start()
            if vendor == "sqlite":
                for event in events:
                    event.wait(timeout=60)
            else:
                _wait_for_running_statements(database, threads)
            unregister(tenant)
            for worker in workers:
                worker.join(timeout=60)
        return {
            "seen": seen,
            "open connections": open_connection_count(),
            "open files": _open_files(server, database) if vendor == "sqlite" else 0,
            "sessions": _sessions(database, settle_to=0) if vendor == "postgresql" else 0,
        }
    finally:
        server.drop_database(database)


def requests_while_deleted(threads: int, suffix: str) -> dict[str, Any]:
    """``threads`` threads send requests for one tenant through Django's WSGI handler,
    each to a view that keeps the tenant's database busy, and the tenant is deleted once
    every thread's first request is inside that statement; those requests go on once it
    is deleted. Each thread goes on until it is told the tenant does not exist. Returns
    the statuses each thread got and the exceptions behind any 500."""
    global slow_statement_started, slow_statement_done
    from django.conf import settings
    from django.core.signals import got_request_exception
    from django.db import connections
    from django.test.utils import override_settings, setup_databases, teardown_databases
    from psycopg import sql

    from tenancy.conf import use_test_database_names
    from tenancy.provisioning import create_tenant, deprovision_tenant
    from tests.conftest import pgbouncer_console
    from tests.settings import BACKEND, PGBOUNCER

    use_test_database_names(suffix)
    default = settings.DATABASES["default"]
    if BACKEND == "sqlite":
        default["TEST"]["NAME"] = str(Path(default["NAME"]).with_name(f"main_{suffix}.db"))
    else:
        default["TEST"]["NAME"] = f"test_tenancy_main_{suffix}"
    config = setup_databases(verbosity=0, interactive=False, aliases={"default"})
    failures: list[str] = []
    got_request_exception.connect(
        lambda sender, request, **kwargs: failures.append(repr(sys.exc_info()[1])), weak=False
    )
    statuses: list[list[int]] = [[] for _ in range(threads)]
    started, deleted = threading.Semaphore(0), threading.Event()
    slow_statement_started = started.release

    def wait_for_the_deletion() -> None:
        deleted.wait(timeout=60)

    slow_statement_done = wait_for_the_deletion
    try:
        with override_settings(
            ROOT_URLCONF="tests.inflight",
            TENANCY={**settings.TENANCY, "USE_TEMPLATE_DATABASES": False},
        ):
            tenant = create_tenant("doomed", domains=["doomed.example.test"])

            def serve(mine: list[int]) -> None:
                while len(mine) < 200:
                    mine.append(_wsgi_status("doomed.example.test", "/slow-notes/"))
                    if mine[-1] == 404:
                        return

            workers = [threading.Thread(target=serve, args=(mine,)) for mine in statuses]
            for worker in workers:
                worker.start()
            for _ in range(threads):
                started.acquire(timeout=120)
            if BACKEND == "postgresql":
                _wait_for_running_statements(tenant.database_name, threads)
            deprovision_tenant(tenant)
            deleted.set()
            for worker in workers:
                worker.join(timeout=120)
        return {"statuses": statuses, "failures": failures}
    finally:
        connections.close_all()
        if PGBOUNCER:  # PgBouncer keeps server connections that would block the DROP
            with pgbouncer_console("one") as console:
                console.execute(sql.SQL("KILL {}").format(sql.Identifier(default["TEST"]["NAME"])))
        teardown_databases(config, verbosity=0)


def _wsgi_status(host: str, path_info: str) -> int:
    """One GET through Django's WSGI handler, as a WSGI server sends it."""
    from django.core.handlers.wsgi import WSGIHandler

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path_info,
        "SERVER_NAME": host,
        "SERVER_PORT": "80",
        "HTTP_HOST": host,
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
    }
    statuses: list[str] = []
    response = WSGIHandler()(environ, lambda status, headers: statuses.append(status))
    try:
        b"".join(response)
    finally:
        response.close()
    return int(statuses[0].split()[0])


def _wait_for_running_statements(database: str, count: int) -> None:
    """Until ``count`` slow statements run on PostgreSQL database ``database`` (60 s at
    most). Only the slow ones count: a connection's set-up statements are active too, for a
    moment, before its thread reaches its statement."""
    from tenancy.backends import get_server

    deadline = time.monotonic() + 60
    with get_server("one")._cursor() as cursor:  # type: ignore[attr-defined]
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = %s AND state = 'active' AND query LIKE %s",
                [database, "%pg_sleep%"],
            )
            if cursor.fetchone()[0] >= count:
                return
            time.sleep(0.01)


def _sessions(database: str, settle_to: int) -> int:
    from tests.conftest import client_sessions

    return client_sessions("one", [database], settle_to)


def _open_files(server: Any, database: str) -> int:
    """How many of this process's file descriptors are open on the database's file."""
    target = server.path(database).resolve()
    count = 0
    for descriptor in Path("/proc/self/fd").iterdir():
        try:
            name = os.readlink(descriptor)
        except OSError:
            continue
        if name.removesuffix(" (deleted)") == str(target):
            count += 1
    return count


SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "queries_while_unregistered": queries_while_unregistered,
    "requests_while_deleted": requests_while_deleted,
}
