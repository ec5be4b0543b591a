#!/usr/bin/env python
"""Backing up and restoring a tenant: ``backup_tenant`` and ``restore_tenant`` against
``pg_dump`` and ``pg_restore`` run by hand on the same database, for tenants of about 1,
10 and 100 MB.

    scripts/with-postgres -n 2 .venv/bin/python benchmarks/backups.py [--sizes 1,10,100] [--runs 3]

The cluster of TENANCY_TEST_PG_1 is the server (benchmarks/moving_settings.py, which
names a second). Each tenant holds one table
(``notes_note``) of rows of about 1 KB (benchmarks/moving.py's). Per size, each run (the
two sides alternate which goes first):

- **pg_dump by hand**: ``pg_dump --format=custom --file FILE`` of the tenant's database
  (compressed, pg_dump's default, as backup_tenant runs it);
- **backup_tenant**: the same pg_dump of an exported snapshot, with the rows of each
  table counted in that snapshot meanwhile, the SHA-256 of the dump, the manifest, the tar
  file written under a private name, synced and linked into place;
- **pg_restore by hand**: ``createdb``, then ``pg_restore --single-transaction
  --no-owner --no-acl --exit-on-error`` of the dump file into it;
- **restore_tenant --as**: a new tenant recorded, the same pg_restore reading the tar
  file once the dump's digest (read while the database is created) matched, the rows
  counted and compared with the manifest, the migrations checked, the tenant activated.

Printed: medians of the runs in seconds and tenancy's time over the tools' (the overhead).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.moving_settings"

from benchmarks.moving import fill, set_up, tear_down  # noqa: E402


def dump_by_hand(name: str, path: Path) -> float:
    from tenancy.backends import get_server
    from tenancy.backends.client_programs import client_program

    with get_server("one").client_connection(name) as (dsn, environment):  # type: ignore[attr-defined]
        started = time.perf_counter()
        subprocess.run(
            [client_program("pg_dump"), "--format=custom", "--file", str(path), dsn],
            env=environment,
            check=True,
        )
        return time.perf_counter() - started


def restore_by_hand(path: Path, name: str) -> float:
    from tenancy.backends import get_server
    from tenancy.backends.client_programs import client_program
    from tenancy.backends.postgresql import RESTORE_OPTIONS

    server = get_server("one")
    with server.client_connection(name) as (dsn, environment):  # type: ignore[attr-defined]
        started = time.perf_counter()
        server.create_database(name)  # createdb
        subprocess.run(
            [client_program("pg_restore"), *RESTORE_OPTIONS, "--dbname", dsn, str(path)],
            env=environment,
            check=True,
        )
        seconds = time.perf_counter() - started
    server.drop_database(name)
    return seconds


def one_run(tenant: object, megabytes: int, run: int, directory: Path) -> tuple[float, ...]:
    """Seconds of pg_dump by hand, backup_tenant, pg_restore by hand, restore_tenant (the
    two sides of each in turns first), and the backup file's bytes."""
    from tenancy.backups import backup_tenant, restore_tenant
    from tenancy.models import get_tenant_model
    from tenancy.provisioning import deprovision_tenant

    by_hand_file = directory / f"by-hand-{megabytes}-{run}.dump"
    ours_file = directory / f"b{megabytes}-{run}.tar"
    name = tenant.database_name  # type: ignore[attr-defined]

    def backup() -> float:
        begun = time.perf_counter()
        backup_tenant(tenant, ours_file)  # type: ignore[arg-type]
        return time.perf_counter() - begun

    def restore() -> float:
        begun = time.perf_counter()
        copy = restore_tenant(ours_file, as_slug=f"b{megabytes}-copy{run}")
        seconds = time.perf_counter() - begun
        deprovision_tenant(get_tenant_model()._default_manager.get(slug=copy.slug))
        return seconds

    if run % 2 == 0:
        hand_dump, ours_dump = dump_by_hand(name, by_hand_file), backup()
        hand_restore = restore_by_hand(by_hand_file, f"bench_move_by_hand_{megabytes}")
        ours_restore = restore()
    else:
        ours_dump, hand_dump = backup(), dump_by_hand(name, by_hand_file)
        ours_restore = restore()
        hand_restore = restore_by_hand(by_hand_file, f"bench_move_by_hand_{megabytes}")
    size = ours_file.stat().st_size
    by_hand_file.unlink()
    ours_file.unlink()
    return hand_dump, ours_dump, hand_restore, ours_restore, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1,10,100", help="MB per tenant (default 1,10,100)")
    parser.add_argument("--runs", type=int, default=3, help="runs per size (default 3)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]

    started = time.perf_counter()
    versions = set_up()
    from tenancy.backends import get_server
    from tenancy.provisioning import create_tenant

    print(
        f"{versions}; PostgreSQL {os.environ['TENANCY_TEST_PG_1']}; medians of {args.runs} runs.\n"
    )
    print(
        f"{'size':>6} {'on disk':>8} {'file':>7} | {'pg_dump':>8} {'backup':>8} {'ratio':>6} | "
        f"{'pg_restore':>10} {'restore':>8} {'ratio':>6}"
    )
    with tempfile.TemporaryDirectory(prefix="tenancy-bench-") as directory:
        for megabytes in sizes:
            tenant = create_tenant(f"b{megabytes}")
            fill(tenant, megabytes)
            on_disk = get_server("one").database_size(tenant.database_name) / 1e6
            runs = [one_run(tenant, megabytes, run, Path(directory)) for run in range(args.runs)]
            hand_dump, ours_dump, hand_restore, ours_restore, sizes_ = zip(*runs, strict=True)
            size = sizes_[0]
            dump, backup = statistics.median(hand_dump), statistics.median(ours_dump)
            restore_hand, restore = (
                statistics.median(hand_restore),
                statistics.median(ours_restore),
            )
            print(
                f"{megabytes:>4}MB {on_disk:>6.1f}MB {size / 1e6:>5.1f}MB | {dump:>7.2f}s "
                f"{backup:>7.2f}s {backup / dump:>5.2f}x | {restore_hand:>9.2f}s "
                f"{restore:>7.2f}s {restore / restore_hand:>5.2f}x"
            )
    tear_down()
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
