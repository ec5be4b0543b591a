#!/usr/bin/env python
"""Moving a tenant between two PostgreSQL servers: ``move_tenant`` against the same copy
made by hand with ``pg_dump | pg_restore``, for tenants of about 1, 10 and 100 MB.

    scripts/with-postgres -n 2 .venv/bin/python benchmarks/moving.py [--sizes 1,10,100]

The two clusters of TENANCY_TEST_PG_1 and TENANCY_TEST_PG_2 are the servers "one" and
"two". Each tenant holds one table (``notes_note``) of rows of about 1 KB. Per size, in
this order, each once:

- **by hand**: ``createdb`` on the other cluster, then ``pg_dump`` of the tenant's
  database piped into ``pg_restore`` into it, with the options move_tenant gives them
  (custom format uncompressed; one transaction; no owners or grants): the copy alone,
  without verification, nothing keeping writers out, the registry unchanged;
- **move_tenant**: the tenant moved from "one" to "two" (every step: marked moving and
  every process waited for, ``RESOLUTION_CACHE_TTL`` = 1 s; writes stopped; the same
  ``pg_dump | pg_restore``; the copy verified table by table; the registry switched; the
  source dropped).

Printed: each step's seconds, the time the tenant takes no writes (from being marked moving
to the switch; its reads are served from the source meanwhile, and other processes see
the switch within one more RESOLUTION_CACHE_TTL), the
copy step (the same tools plus tenancy's work around them) against the copy by hand, and
the copy with its verification against the copy by hand.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.moving_settings"

ROW_BYTES = 1000


def fill(tenant: object, megabytes: int) -> None:
    """About MEGABYTES of rows in the tenant's note table (one INSERT ... SELECT)."""
    from tenancy.connections import connection_for

    rows = megabytes * 1_000_000 // ROW_BYTES
    with connection_for(tenant).cursor() as cursor:  # type: ignore[arg-type]
        # The rest of each row's kilobyte: hex digits, which TOAST cannot compress away, in
        # a column the model does not need to know.
        cursor.execute("ALTER TABLE notes_note ADD COLUMN body text")
        cursor.execute(
            "INSERT INTO notes_note (title, body) SELECT left(md5(n::text), 100), "
            "(SELECT string_agg(md5(n::text || k::text), '') FROM generate_series(1, 28) AS k) "
            "FROM generate_series(1, %s) AS n",
            [rows],
        )


def by_hand(name: str) -> float:
    """``pg_dump | pg_restore`` of database NAME from server one into a new database on two."""
    from tenancy.backends import get_server
    from tenancy.backends.client_programs import client_program as _client_program
    from tenancy.moving import _DUMP_OPTIONS, _RESTORE_OPTIONS

    one, two = get_server("one"), get_server("two")
    copy = f"{name}_by_hand"
    with (
        one.client_connection(name) as (dump_dsn, dump_environment),
        two.client_connection(copy) as (restore_dsn, restore_environment),
    ):
        started = time.perf_counter()
        two.create_database(copy)  # createdb
        dump = subprocess.Popen(
            [_client_program("pg_dump"), *_DUMP_OPTIONS, "--dbname", dump_dsn],
            stdout=subprocess.PIPE,
            env=dump_environment,
        )
        subprocess.run(
            [_client_program("pg_restore"), *_RESTORE_OPTIONS, "--dbname", restore_dsn],
            stdin=dump.stdout,
            env=restore_environment,
            check=True,
        )
        assert dump.wait() == 0
    seconds = time.perf_counter() - started
    two.drop_database(copy)
    return seconds


def set_up() -> str:
    """Fresh benchmark databases on both clusters, Django set up and the main database
    migrated; a line naming the versions."""
    from benchmarks.postgres import drop_databases, maintenance_connection

    for cluster in (1, 2):
        drop_databases("bench_move_", cluster)
    with maintenance_connection() as connection:
        connection.execute("CREATE DATABASE bench_move_main")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return f"Django {django.get_version()}, Python {sys.version.split()[0]}"


def tear_down() -> None:
    from django.db import connections

    from benchmarks.postgres import drop_databases

    connections.close_all()
    for cluster in (1, 2):
        drop_databases("bench_move_", cluster)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1,10,100", help="MB per tenant (default 1,10,100)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]

    started = time.perf_counter()
    versions = set_up()
    from tenancy.backends import get_server
    from tenancy.moving import move_tenant
    from tenancy.provisioning import create_tenant

    print(
        f"{versions}; PostgreSQL "
        f"{os.environ['TENANCY_TEST_PG_1']} -> {os.environ['TENANCY_TEST_PG_2']}; "
        "one run per size.\n"
    )
    header = (
        f"{'size':>6} {'on disk':>8} {'by hand':>8} {'move':>7} {'no writes':>9} "
        f"{'copy':>7} {'/ by hand':>9} {'verify':>7} {'copy+verify':>11} {'/ by hand':>9}"
        "   steps"
    )
    print(header)
    for megabytes in sizes:
        tenant = create_tenant(f"m{megabytes}")
        fill(tenant, megabytes)
        on_disk = get_server("one").database_size(tenant.database_name) / 1e6
        hand = by_hand(tenant.database_name)
        report = move_tenant(tenant, "two")
        steps = report.steps
        move = sum(steps.values())
        unavailable = sum(
            steps[step] for step in ("prepared", "waited", "copied", "verified", "switched")
        )
        ours = steps["copied"] + steps["verified"]
        print(
            f"{megabytes:>4}MB {on_disk:>6.1f}MB {hand:>7.2f}s {move:>6.2f}s "
            f"{unavailable:>8.2f}s {steps['copied']:>6.2f}s {steps['copied'] / hand:>8.2f}x "
            f"{steps['verified']:>6.2f}s "
            f"{ours:>10.2f}s {ours / hand:>8.2f}x   "
            + ", ".join(f"{step} {seconds:.2f}" for step, seconds in steps.items())
        )
    tear_down()
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
