#!/usr/bin/env python
"""Open PostgreSQL connections of one process serving many tenants at random.

    TENANCY_PG_MAX_CONNECTIONS=1500 scripts/with-postgres -n 1 --replica \\
        .venv/bin/python benchmarks/connections.py [--tenants 1000] [--cap 50]

The example project's /api/tasks/ (a read) served through Django's WSGI handler by 8
threads of one process (as a threaded WSGI server runs it), each request for a tenant
picked at random, signed in as a member, with persistent connections (CONN_MAX_AGE =
None, what users set to save the connection set-up). Each configuration runs in a fresh
process; a monitor samples pg_stat_activity (the primary's and the replica's) every 5 ms
and prints the peak of sessions on the tenants' databases, next to the requests that
failed and the requests served per second:

- no cap, on a server whose max_connections holds every tenant's connection (the
  baseline: what the cap costs);
- MAX_OPEN_CONNECTIONS = --cap;
- Django's psycopg pool per tenant alias instead of persistent connections, with the cap
  (what Django offers instead);
- the cap and one streaming replica (REPLICAS): the reads go to the replica;
- the same tenants as schemas of one shared database (PLACEMENT "schemas").
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.postgres import maintenance_connection, server  # noqa: E402

THREADS = 8
# Django's psycopg pool option (Django 5.1+): one pool per tenant alias. A short wait for a
# connection: a pool that cannot get one waits this long, then fails.
POOL = {"min_size": 1, "max_size": 2, "timeout": 1}
REPLICA = os.environ.get("TENANCY_TEST_PG_REPLICA_1")
MODES = ("uncapped", "capped", "pool", "replica", "schemas")


def replica_settings() -> list[dict[str, str]]:
    host, _, port = (REPLICA or ":").rpartition(":")
    return [{"HOST": host, "PORT": port}]


def configure(mode: str, cap: int) -> None:
    import django
    from django.conf import settings

    tenant_server = server(CONN_MAX_AGE=None)
    if mode == "pool":
        tenant_server = server(OPTIONS={"pool": POOL})
    elif mode == "replica":
        tenant_server["REPLICAS"] = replica_settings()
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
                "pg": tenant_server,
                "shared": server(
                    CONN_MAX_AGE=None, PLACEMENT="schemas", DATABASE="bench_conn_shared"
                ),
            },
            "DEFAULT_SERVER": "pg",
            "DATABASE_NAME": "bench_conn_{slug}",
            "MAX_OPEN_CONNECTIONS": None if mode == "uncapped" else cap,
            "CONNECTION_WAIT_TIMEOUT": 30,
        },
    )
    django.setup()


def slugs(tenants: int, mode: str) -> list[str]:
    letter = "s" if mode == "schemas" else "t"
    return [f"{letter}{i:04d}" for i in range(tenants)]


def prepare(tenants: int) -> None:
    from psycopg import sql

    with maintenance_connection() as connection:
        names = connection.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'bench_conn_%'"
        ).fetchall()
        for (name,) in names:
            connection.execute(
                sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name))
            )
        connection.execute("CREATE DATABASE bench_conn_main")
    configure("capped", 50)
    from django.core.management import call_command

    from benchmarks.request_cost import add_member
    from tenancy.provisioning import create_tenant

    call_command("migrate", verbosity=0)
    made = [
        create_tenant(
            slug, server="shared" if slug[0] == "s" else "pg", domains=[f"{slug}.localhost"]
        )
        for mode in ("capped", "schemas")
        for slug in slugs(tenants, mode)
    ]
    add_member(made)


SESSIONS = (
    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
    "AND datname LIKE 'bench_conn_%' AND datname <> 'bench_conn_main'"
)


def replica_connection():
    import psycopg

    host, _, port = (REPLICA or ":").rpartition(":")
    return psycopg.connect(
        host=host, port=port, user="postgres", dbname="postgres", autocommit=True
    )


def record_ready_positions() -> None:
    """What `migrate_tenants` records once for tenants made before their server had
    replicas: the WAL position a replica must have replayed to serve each (one for all
    here, taken now)."""
    from django.db.models import Value
    from django.db.models.functions import Concat

    from tenancy.models import Tenant

    with maintenance_connection() as primary:
        [lsn] = primary.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    mark = Concat(Value(f"{lsn}:"), "server", Value(":"), "database_name")
    Tenant.objects.update(ready_lsn=mark)


def wait_for_replica() -> None:
    """Until the replica has replayed what was provisioned."""
    with maintenance_connection() as primary, replica_connection() as replica:
        [lsn] = primary.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
        while not replica.execute(
            "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [lsn]
        ).fetchone()[0]:
            time.sleep(0.05)


def serve(mode: str, cap: int, tenants: int, requests: int) -> None:
    """Prints the peak of tenant sessions (sampled), failed requests, requests per second
    and the peak of connections counted by tenancy."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a socket per connection
    configure(mode, cap)
    from benchmarks.request_cost import Server

    if mode == "replica":
        record_ready_positions()
        wait_for_replica()
    app = Server()
    names = slugs(tenants, mode)
    for slug in names:  # signed in before the clock starts, as returning members are
        app.cookie(f"{slug}.localhost")
    peak, failed, done = 0, 0, threading.Event()
    monitors = [maintenance_connection()]
    if mode == "replica":
        monitors.append(replica_connection())

    each = [0] * len(monitors)  # the peak on each server (the primary, the replica)

    def monitor() -> None:
        nonlocal peak
        while not done.is_set():
            counts = [m.execute(SESSIONS).fetchone()[0] for m in monitors]
            peak = max(peak, sum(counts))
            each[:] = [max(a, b) for a, b in zip(each, counts, strict=True)]
            time.sleep(0.005)

    def work(seed: int) -> None:
        nonlocal failed
        from tenancy.connections import close_all

        pick = random.Random(seed).choice
        for _ in range(requests // THREADS):
            slug = pick(names)
            status, body = app.request(f"{slug}.localhost")
            if not status.startswith("200"):
                failed += 1  # e.g. the server refusing more connections
            elif f'"tenant": "{slug}"'.encode() not in body:
                raise SystemExit(f"{slug}: wrong tenant")
        close_all()

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
    from tenancy.connections import snapshot

    print(peak, failed, requests / elapsed, snapshot().peak, each[-1] if mode == "replica" else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", type=int, default=1_000)
    parser.add_argument("--requests", type=int, default=8_000)
    parser.add_argument("--cap", type=int, default=50)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.cap, args.tenants, args.requests)
        return
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", f"import benchmarks.connections as c; c.prepare({args.tenants})"],
        cwd=ROOT,
        check=True,
    )
    print(
        f"{args.tenants} tenants of each placement provisioned in "
        f"{time.perf_counter() - started:.0f} s"
    )
    rows = []
    replica_peak = 0
    for mode in MODES:
        if mode == "replica" and not REPLICA:
            print("replica: skipped, run under scripts/with-postgres --replica")
            continue
        # A quarter of the requests with pools: each refused one waits for the pool first.
        requests = args.requests // 4 if mode == "pool" else args.requests
        command = [sys.executable, __file__, "--serve", mode, "--cap", str(args.cap)]
        command += ["--tenants", str(args.tenants), "--requests", str(requests)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        peak, failed, rate, counted, on_replica = output.split()
        rows.append((mode, requests, int(peak), int(failed), float(rate), int(counted)))
        if mode == "replica":
            replica_peak = int(on_replica)
    import django

    with maintenance_connection() as connection:
        [(most,)] = connection.execute("SHOW max_connections").fetchall()
    print(
        f"Django {django.get_version()}, Python {sys.version.split()[0]}; {THREADS} threads, "
        f"requests for {args.tenants} tenants at random, CONN_MAX_AGE = None (the pool run: "
        f"OPTIONS['pool'] = {POOL}); server max_connections {most}."
    )
    print(
        f"{'configuration':34} {'requests':>9} {'peak sessions':>14} {'(counted)':>10} "
        f"{'failed':>7} {'requests/s':>11} {'vs no cap':>10}"
    )
    names = {
        "uncapped": "no cap",
        "capped": f"MAX_OPEN_CONNECTIONS = {args.cap}",
        "pool": f"cap {args.cap}, psycopg pool per tenant",
        "replica": f"cap {args.cap}, reads from 1 replica",
        "schemas": "schema tenants (one shared db)",
    }
    rates = {mode: rate for mode, *_, rate, _ in rows}
    baseline = rates.get("uncapped")
    for mode, requests, peak, failed, rate, counted in rows:
        ratio = f"{rate / baseline:9.2f}x" if baseline else ""
        print(
            f"{names[mode]:34} {requests:9} {peak:14} {counted:10} {failed:7} "
            f"{rate:11.0f} {ratio:>10}"
        )
    if "replica" in rates and "capped" in rates:
        print(
            f"reads from 1 replica: {rates['replica'] / rates['capped']:.2f}x the requests/s "
            f"of the primary alone (both with the cap); peak sessions on the replica "
            f"{replica_peak} (the reads were served there)"
        )


if __name__ == "__main__":
    main()
