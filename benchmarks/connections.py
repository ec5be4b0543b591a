#!/usr/bin/env python
"""Open PostgreSQL connections of one process serving many tenants at random.

    scripts/with-postgres -n 1 .venv/bin/python benchmarks/connections.py [--tenants 1000]

The example project's /api/tasks/ served through Django's WSGI handler by 8 threads of one
process (as a threaded WSGI server runs it), each request for a tenant picked at random,
with persistent connections (CONN_MAX_AGE = None, what users set to save the connection
set-up). Run twice in fresh processes, with MAX_OPEN_CONNECTIONS = None (no cap) and with a
cap; a monitor samples pg_stat_activity every 10 ms and prints the peak of sessions on the
tenants' databases, next to the requests that failed (the server refusing connections
beyond its max_connections) and the requests served per second.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.postgres import maintenance_connection, server  # noqa: E402

THREADS = 8
# Django's psycopg pool option (Django 5.1+) in the third run: one pool per tenant alias.
# A short wait for a connection: a pool that cannot get one waits this long, then fails.
POOL = {"min_size": 1, "max_size": 2, "timeout": 1}


def configure(cap: int | None, pool: bool = False) -> None:
    import django
    from django.conf import settings

    settings.configure(
        SECRET_KEY="benchmarks-only",
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        ALLOWED_HOSTS=[".localhost"],
        INSTALLED_APPS=[
            "django.contrib.admin",
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django.contrib.messages",
            "tenancy",
            "example_project.projects",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "tenancy.middleware.TenantMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
        ],
        ROOT_URLCONF="example_project.tenant_urls",
        DATABASES={"default": {**server(), "NAME": "bench_conn_main"}},
        DATABASE_ROUTERS=["tenancy.routers.TenantRouter"],
        TENANCY={
            "TENANT_APPS": ["example_project.projects"],
            "SERVERS": {
                "pg": server(OPTIONS={"pool": POOL}) if pool else server(CONN_MAX_AGE=None)
            },
            "DEFAULT_SERVER": "pg",
            "DATABASE_NAME": "bench_conn_{slug}",
            "MAX_OPEN_CONNECTIONS": cap,
        },
    )
    django.setup()


def prepare(tenants: int) -> None:
    from psycopg import sql

    with maintenance_connection() as connection:
        names = connection.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'bench_conn_%'"
        ).fetchall()
        for (name,) in names:
            connection.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))
        connection.execute("CREATE DATABASE bench_conn_main")
    configure(None)
    from django.core.management import call_command

    from tenancy.provisioning import create_tenant

    call_command("migrate", verbosity=0)
    made = [create_tenant(f"t{i:04d}", domains=[f"t{i:04d}.localhost"]) for i in range(tenants)]
    from benchmarks.request_cost import add_member

    add_member(made)


def sessions() -> int:
    with maintenance_connection() as connection:
        row = connection.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname LIKE 'bench_conn_t%' AND backend_type = 'client backend'"
        ).fetchone()
        return int(row[0]) if row else 0


def max_connections() -> int:
    with maintenance_connection() as connection:
        row = connection.execute("SHOW max_connections").fetchone()
        return int(row[0]) if row else 0


def serve(cap: int | None, tenants: int, requests: int, pool: bool = False) -> None:
    """Prints the peak of tenant sessions and the requests per second."""
    configure(cap, pool)
    from benchmarks.request_cost import Server

    app = Server()
    slugs = [f"t{i:04d}" for i in range(tenants)]
    peak, failed, done = 0, 0, threading.Event()

    def monitor() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, sessions())
            time.sleep(0.01)

    def work(seed: int) -> None:
        nonlocal failed
        pick = random.Random(seed).choice
        for _ in range(requests // THREADS):
            slug = pick(slugs)
            status, body = app.request(f"{slug}.localhost")
            if not status.startswith("200"):
                failed += 1  # e.g. the server refusing more connections
            elif f'"tenant": "{slug}"'.encode() not in body:
                raise SystemExit(f"{slug}: wrong tenant")

    watcher = threading.Thread(target=monitor)
    watcher.start()
    workers = [threading.Thread(target=work, args=(seed,)) for seed in range(THREADS)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    done.set()
    watcher.join()
    print(peak, failed, requests / elapsed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", type=int, default=1_000)
    parser.add_argument("--requests", type=int, default=8_000)
    parser.add_argument("--cap", type=int, default=50)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        mode, _, cap = args.serve.rpartition(":")
        serve(int(cap) or None, args.tenants, args.requests, pool=mode == "pool")
        return
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", f"import benchmarks.connections as c; c.prepare({args.tenants})"],
        cwd=ROOT,
        check=True,
    )
    print(f"{args.tenants} tenants provisioned in {time.perf_counter() - started:.0f} s")
    rows = []
    for mode in ("0", str(args.cap), f"pool:{args.cap}"):
        # A quarter of the requests with pools: each refused one waits for the pool first.
        requests = args.requests // 4 if mode.startswith("pool") else args.requests
        output = subprocess.run(
            [
                sys.executable,
                __file__,
                "--serve",
                mode,
                "--tenants",
                str(args.tenants),
                "--requests",
                str(requests),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        rows.append((mode, requests, int(output[0]), int(output[1]), float(output[2])))
    import django

    print(
        f"Django {django.get_version()}, Python {sys.version.split()[0]}; requests "
        f"from {THREADS} threads over {args.tenants} tenants at random, "
        f"CONN_MAX_AGE = None; the pool run: OPTIONS['pool'] = {POOL}, CONN_MAX_AGE = 0."
    )
    print(
        f"{'MAX_OPEN_CONNECTIONS':22} {'requests':>9} {'peak sessions':>14} "
        f"{'failed requests':>16} {'requests/s':>11}  "
        f"(server max_connections: {max_connections()})"
    )
    names = {"0": "None (no cap)", f"pool:{args.cap}": f"{args.cap}, psycopg pool"}
    for mode, requests, peak, failed, rate in rows:
        print(f"{names.get(mode, mode):22} {requests:9} {peak:14} {failed:16} {rate:11.0f}")


if __name__ == "__main__":
    main()
