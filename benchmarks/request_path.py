#!/usr/bin/env python
"""The cost of one request in plain Django, django-tenants and tenancy, side by side.

    scripts/with-postgres -n 1 .venv/bin/python benchmarks/request_path.py [--requests 2000]

The request: GET /note/ on the host alpha.localhost, whose view reads one row of a tenant
model by primary key (benchmarks/request_path_project), through Django's WSGI handler in
the measuring process, as a WSGI server calls it. Plain Django serves the same view from
its only database; django-tenants finds the tenant by its host in its Domain table and sets
the schema; tenancy finds it in ``tenancy.Domain`` in the main database and routes to the
tenant's database; tenancy with schema placement routes to the tenant's schema of a shared
database instead, or (main) to the tenant's schema of the main database, as django-tenants
keeps it, on the main database's connection; tenancy with users per tenant keeps users and
sessions in the tenant's database (auth and sessions in TENANT_APPS). All on the one
cluster of TENANCY_TEST_PG_1.

Rows: persistent connections (CONN_MAX_AGE=600) and Django's default (CONN_MAX_AGE=0),
anonymous and signed in (a session cookie of a user signed in on that tenant; the view
reads ``request.user``). Each variant and row runs in a process of its own with the
variant's settings module; django-tenants comes from PyPI, in the virtualenv .venv-bench
(made here with scripts/venv when missing or stale). Rounds alternate the processes; the
printed figure is the median of the rounds' milliseconds per request. Statements are those
sent to PostgreSQL (psycopg's ``Cursor.execute``, so django-tenants' ``SET search_path``
and connection set-up count too), over 200 requests of their own.

Last, a cProfile of tenancy's persistent-connection signed-in request: the functions of
tenancy and of Django's request path with the highest cumulative time per request.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DJANGO_TENANTS = "4.0.1"  # pinned: the version measured
BENCH_VENV = ROOT / ".venv-bench"
HOST = "alpha.localhost"
USERNAME = "bench"
VARIANTS = (
    "plain",
    "django_tenants",
    "tenancy",
    "tenancy_schemas",
    "tenancy_main",
    "tenancy_users",
)
# The tenancy variants, as printed: a database per tenant, a schema per tenant (of a shared
# database; of the main database), users per tenant.
TENANCY_VARIANTS = {
    "tenancy": "tenancy",
    "tenancy_schemas": "schemas",
    "tenancy_main": "main",
    "tenancy_users": "users",
}
ROWS = (
    ("persistent connections (CONN_MAX_AGE=600), anonymous", 600, False),
    ("persistent connections (CONN_MAX_AGE=600), signed in", 600, True),
    ("Django's default (CONN_MAX_AGE=0), anonymous", 0, False),
    ("Django's default (CONN_MAX_AGE=0), signed in", 0, True),
)
COUNTED = 50


def python_for(variant: str) -> str:
    if variant == "django_tenants":
        return str(BENCH_VENV / "bin" / "python")
    return sys.executable


def bench_venv() -> None:
    """.venv-bench: this project's dev install plus django-tenants from PyPI."""
    python = subprocess.run(
        [str(ROOT / "scripts" / "find-python"), "3.11"], capture_output=True, text=True
    ).stdout.strip()
    subprocess.run(
        [
            str(ROOT / "scripts" / "venv"),
            str(BENCH_VENV),
            python or sys.executable,
            "django>=5.2,<6",
            "dev",
        ],
        cwd=ROOT,
        check=True,
    )
    installed = subprocess.run(
        [
            python_for("django_tenants"),
            "-c",
            "import importlib.metadata as m; print(m.version('django-tenants'))",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    if installed != DJANGO_TENANTS:
        subprocess.run(
            [
                python_for("django_tenants"),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                f"django-tenants=={DJANGO_TENANTS}",
            ],
            check=True,
        )


def setup(variant: str) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = f"benchmarks.request_path_project.settings_{variant}"
    import django

    django.setup()


# Preparation, in the variant's own process: its databases, one note, one user.


def drop_databases() -> None:
    from benchmarks.postgres import drop_databases

    drop_databases("bench_path_")


def create_database(name: str) -> None:
    from psycopg import sql

    from benchmarks.postgres import maintenance_connection

    with maintenance_connection() as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def prepare(variant: str) -> None:
    from django.conf import settings

    create_database(settings.DATABASES["default"]["NAME"])
    setup(variant)
    from django.contrib.auth.models import User
    from django.core.management import call_command

    from benchmarks.request_path_project.notes.models import Note

    if variant == "plain":
        call_command("migrate", verbosity=0)
        Note.objects.create(pk=1, title="alpha's note")
    elif variant == "django_tenants":
        from django.db import connection

        from benchmarks.request_path_project.customers.models import Client, Domain

        call_command("migrate_schemas", shared=True, interactive=False, verbosity=0)
        client = Client(schema_name="alpha", name="alpha")
        client.save(verbosity=0)  # creates and migrates the schema
        Domain.objects.create(domain=HOST, tenant=client, is_primary=True)
        connection.set_tenant(client)
        Note.objects.create(pk=1, title="alpha's note")
        connection.set_schema_to_public()
    else:  # tenancy, a database or a schema per tenant
        from tenancy import tenant_context
        from tenancy.provisioning import create_tenant

        call_command("migrate", verbosity=0)
        tenant = create_tenant("alpha", domains=[HOST])
        with tenant_context(tenant):
            Note.objects.create(pk=1, title="alpha's note")
            if variant == "tenancy_users":
                User.objects.create_user(USERNAME)
        if variant == "tenancy_users":
            return
    User.objects.create_user(USERNAME)


# Measuring, in a process of its own per variant and row.


class Server:
    """Calls Django's WSGI handler the way a WSGI server does."""

    def __init__(self, variant: str, signed_in: bool) -> None:
        from django.core.handlers.wsgi import WSGIHandler

        self.handler = WSGIHandler()
        self.cookie = session_cookie(variant) if signed_in else ""
        self.expected = f"alpha's note / {USERNAME if signed_in else ''}".encode()

    def get(self) -> None:
        from benchmarks.wsgi import wsgi_get

        status, body = wsgi_get(self.handler, HOST, "/note/", self.cookie)
        if not status.startswith("200") or body != self.expected:
            raise SystemExit(f"{status}: {body[:200]!r}, expected {self.expected!r}")


def session_cookie(variant: str) -> str:
    """The user's session, signed in on the tenant (tenancy binds a session to its site)."""
    from django.contrib.auth.models import User
    from django.test import Client

    client = Client()
    if variant.startswith("tenancy"):
        from tenancy import tenant_context

        with tenant_context("alpha"):
            client.force_login(User.objects.get(username=USERNAME))
    else:
        client.force_login(User.objects.get(username=USERNAME))
    return f"sessionid={client.cookies['sessionid'].value}"


def count_statements(server: Server, requests: int) -> float:
    """Statements sent to PostgreSQL per request, whatever the connection or cursor."""
    import psycopg

    counted = [0]
    sent: list[str] = []
    execute, executemany = psycopg.Cursor.execute, psycopg.Cursor.executemany

    def counting_execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        counted[0] += 1
        sent.append(str(args[0]) if args else "")
        return execute(self, *args, **kwargs)

    def counting_executemany(self: Any, *args: Any, **kwargs: Any) -> Any:
        counted[0] += 1
        sent.append(str(args[0]) if args else "")
        return executemany(self, *args, **kwargs)

    psycopg.Cursor.execute = counting_execute  # type: ignore[method-assign,assignment]
    psycopg.Cursor.executemany = counting_executemany  # type: ignore[method-assign]
    try:
        for _ in range(requests):
            sent.clear()
            server.get()
    finally:
        psycopg.Cursor.execute = execute  # type: ignore[method-assign]
        psycopg.Cursor.executemany = executemany  # type: ignore[method-assign]
    return counted[0] / requests, list(sent)


def measure(variant: str, signed_in: bool, requests: int) -> dict[str, Any]:
    setup(variant)
    server = Server(variant, signed_in)
    from django.conf import settings

    # Warm up the code (and the connections, where they persist).
    for _ in range(100 if settings.DATABASES["default"]["CONN_MAX_AGE"] else 20):
        server.get()
    statements, last = count_statements(server, COUNTED)
    started = time.perf_counter()
    for _ in range(requests):
        server.get()
    ms = (time.perf_counter() - started) / requests * 1000
    return {"ms": ms, "statements": statements, "last": last}


def profile(requests: int, top: int = 12) -> None:
    """tenancy's persistent-connection signed-in request under cProfile."""
    import cProfile
    import pstats

    setup("tenancy")
    server = Server("tenancy", signed_in=True)
    for _ in range(200):
        server.get()
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    for _ in range(requests):
        server.get()
    profiler.disable()
    total = (time.perf_counter() - started) / requests * 1000
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    tenancy_dir = str(ROOT / "tenancy") + os.sep
    own: list[tuple[float, float, int, str]] = []
    django: list[tuple[float, float, int, str]] = []
    request_path = (
        "core/handlers/",
        "utils/deprecation",
        "contrib/sessions/",
        "contrib/auth/",
        "db/",
        "urls/",
        "http/",
        "dispatch/",
    )
    tenancy_tottime = 0.0
    for (filename, line, name), (_, calls, tottime, cumtime, _) in stats.items():
        where = f"{Path(filename).name}:{line}({name})"
        row = (cumtime, tottime, calls, where)
        if filename.startswith(tenancy_dir):
            own.append(
                (cumtime, tottime, calls, f"tenancy/{filename[len(tenancy_dir) :]}:{line}({name})")
            )
            tenancy_tottime += tottime
        elif f"{os.sep}django{os.sep}" in filename and any(
            part in filename.replace(os.sep, "/") for part in request_path
        ):
            django.append(row)
    print(
        f"\ncProfile, tenancy, persistent connections, signed in: {requests} requests, "
        f"{total:.3f} ms per request under the profiler; time spent in tenancy's own "
        f"functions (tottime): {tenancy_tottime / requests * 1000:.3f} ms per request"
    )
    for title, rows in (("tenancy's functions", own), ("Django's request path", django)):
        print(f"\n{title}, top {top} by cumulative time:")
        print(f"{'cum ms/req':>10} {'own ms/req':>10} {'calls/req':>9}  function")
        for cumtime, tottime, calls, where in sorted(rows, reverse=True)[:top]:
            print(
                f"{cumtime / requests * 1000:10.3f} {tottime / requests * 1000:10.3f} "
                f"{calls / requests:9.1f}  {where}"
            )


def child(variant: str, *arguments: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [python_for(variant), __file__, *arguments],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode:
        sys.stderr.write(result.stderr)
        raise SystemExit(f"{variant} {' '.join(arguments)}: exit {result.returncode}")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2_000, help="per run (default 2000)")
    parser.add_argument(
        "--requests-unpooled",
        type=int,
        default=500,
        help="per run of the CONN_MAX_AGE=0 rows, which connect on every request (default 500)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="runs per row (median)")
    parser.add_argument("--profile-requests", type=int, default=2_000)
    parser.add_argument("--prepare", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--signed-in", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        os.environ["DJANGO_SETTINGS_MODULE"] = (
            f"benchmarks.request_path_project.settings_{args.prepare}"
        )
        prepare(args.prepare)
        return
    if args.measure:
        print(json.dumps(measure(args.measure, args.signed_in, args.requests)))
        return
    if args.profile:
        profile(args.requests)
        return

    started = time.perf_counter()
    bench_venv()
    drop_databases()
    for variant in VARIANTS:
        child(variant, "--prepare", variant)
    versions = {
        variant: subprocess.run(
            [
                python_for(variant),
                "-c",
                "import django, sys; print(django.get_version(), sys.version.split()[0])",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        for variant in ("plain", "django_tenants")
    }
    results: dict[tuple[int, str], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for index, (_, conn_max_age, signed_in) in enumerate(ROWS):
            for variant in VARIANTS:
                requests = args.requests if conn_max_age else args.requests_unpooled
                arguments = ["--measure", variant, "--requests", str(requests)]
                if signed_in:
                    arguments.append("--signed-in")
                output = child(variant, *arguments, env={"BENCH_CONN_MAX_AGE": str(conn_max_age)})
                results.setdefault((index, variant), []).append(json.loads(output))
    django_version, python_version = versions["plain"]
    print(
        f"Django {django_version}, Python {python_version}, django-tenants {DJANGO_TENANTS} "
        f"(Django {versions['django_tenants'][0]}), PostgreSQL at "
        f"{os.environ['TENANCY_TEST_PG_1']}; GET /note/ on {HOST} through the WSGI handler, "
        f"{args.requests} requests per run ({args.requests_unpooled} with CONN_MAX_AGE=0), "
        f"median of {args.rounds} runs; statements counted over {COUNTED} more requests."
    )
    print(
        "\ntenancy: a database per tenant, users and sessions in the main database; schemas: "
        "the same with schema placement;\nmain: schemas of the main database (one connection "
        "for both); users: a database per tenant holding its users\nand sessions too. "
        "Ratios: each tenancy variant's ms / plain's and / django-tenants'.\n"
        f"\n{'':56} {'ms per request':^54} {'statements':^30}\n"
        f"{'':56} {'plain':>8} {'dj-ten.':>8}"
        + "".join(f" {name:>8}" for name in TENANCY_VARIANTS.values())
        + f" {'pl':>4} {'dt':>4}"
        + "".join(f" {name[:2]:>4}" for name in TENANCY_VARIANTS.values())
        + "".join(f" {name + '/pl':>10} {name + '/dt':>10}" for name in TENANCY_VARIANTS.values())
    )
    for index, (label, _, _) in enumerate(ROWS):
        ms = {v: statistics.median(r["ms"] for r in results[(index, v)]) for v in VARIANTS}
        statements = {v: results[(index, v)][0]["statements"] for v in VARIANTS}
        print(
            f"{label:56}"
            + "".join(f" {ms[v]:8.3f}" for v in VARIANTS)
            + "".join(f" {statements[v]:4.1f}" for v in VARIANTS)
            + "".join(
                f" {ms[v] / ms['plain']:9.2f}x {ms[v] / ms['django_tenants']:9.2f}x"
                for v in TENANCY_VARIANTS
            )
        )
    for index in (1, 3):  # the signed-in rows
        print(f"\nStatements of one request, {ROWS[index][0]}:")
        for variant in VARIANTS:
            for statement in results[(index, variant)][0]["last"]:
                print(f"  {variant:15} {' '.join(statement.split())[:100]}")
    sys.stdout.write(
        child(
            "tenancy",
            "--profile",
            "--requests",
            str(args.profile_requests),
            env={"BENCH_CONN_MAX_AGE": "600"},
        )
    )
    drop_databases()
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
