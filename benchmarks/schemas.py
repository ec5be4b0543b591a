#!/usr/bin/env python
"""Schema placement against django-tenants, side by side on one cluster.

    scripts/with-postgres -n 1 .venv/bin/python benchmarks/schemas.py [--tenants 1000]

Both keep each tenant in a schema of one database, with the same tenant apps (Django's
contenttypes, auth and sessions, and an app with 30 migrations; benchmarks/schema_project).
django-tenants 4.0.1 comes from PyPI, in .venv-bench (as benchmarks/request_path.py makes
it). Each command runs in a process of its own, as a user runs it.

1. Nothing to migrate: `migrate_tenants` on --tenants schema tenants against django-tenants'
   `migrate_schemas --tenant` on --dt-tenants schemas (it is linear in the schemas: one
   `migrate` per schema), with its standard and its multiprocessing executor, per tenant.
2. One new migration on --jobs-tenants schemas: `migrate_tenants --jobs 1` and `--jobs 4`
   against `migrate_schemas --tenant` with its standard and its multiprocessing executor
   (TENANT_MULTIPROCESSING_MAX_PROCESSES = 4).
3. Provisioning one tenant: tenancy renaming a spare schema (the default) and migrating a
   new schema, against django-tenants' `auto_create_schema` (migrating) and its
   `clone_tenant` (TENANT_BASE_SCHEMA, its SQL clone function).
4. On a warm connection: one query on the same tenant as before against one query on
   another tenant (the switch), and the peak number of server sessions of 8 threads
   reading from every tenant in turn.

Fleets are made by copying one migrated schema (pg_dump of it, renamed), for both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.migrations import GENERATED, generate_app  # noqa: E402
from benchmarks.request_path import bench_venv, python_for  # noqa: E402

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SETTINGS = "benchmarks.schema_project.settings_{}"
PLUS = {"BENCH_THIRTY_MIGRATIONS": "thirty.migrations_plus"}


def environment(variant: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": SETTINGS.format(variant),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(GENERATED)]),
        **extra,
    }


def manage(variant: str, *args: str, **extra: str) -> float:
    """``manage.py ARGS`` in a new process of the variant's Python; its wall time."""
    started = time.perf_counter()
    subprocess.run(
        [python_for(variant), "manage.py", *args],
        cwd=ROOT,
        env=environment(variant, **extra),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def child(variant: str, *args: str, **extra: str) -> Any:
    """This script's ``--child`` step in the variant's process; its JSON answer."""
    done = subprocess.run(
        [python_for(variant), __file__, "--child", variant, *args],
        cwd=ROOT,
        env=environment(variant, **extra),
        check=False,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"{variant} {' '.join(args)}: exit {done.returncode}")
    return json.loads(done.stdout.splitlines()[-1])


# -- in the variant's process -------------------------------------------------------


def copy_schema(database: str, source: str, targets: list[str]) -> None:
    """Make each of ``targets`` a copy of schema ``source`` (tables, sequences, rows)."""
    from benchmarks.postgres import server

    address = server()
    dump = subprocess.run(
        [
            str(PG_BIN / "pg_dump"),
            "--host", address["HOST"], "--port", address["PORT"], "--username", "postgres",
            "--schema", source, "--no-owner", "--no-privileges", "--inserts", database,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout  # fmt: skip
    # psql's meta-commands (pg_dump writes \restrict lines) are not SQL.
    dump = "\n".join(line for line in dump.splitlines() if not line.startswith("\\"))
    import psycopg

    with psycopg.connect(
        host=address["HOST"], port=address["PORT"], user="postgres", dbname=database
    ) as connection:
        connection.autocommit = True
        for target in targets:
            # The source's name is unique enough ("zzsource") to be replaced as text.
            connection.execute(dump.replace(source, target).encode())


def prepare(variant: str, tenants: int) -> dict[str, Any]:
    import django

    django.setup()
    from django.core.management import call_command

    if variant == "tenancy":
        from tenancy.models import Tenant, TenantStatus
        from tenancy.provisioning import create_tenant

        call_command("migrate", verbosity=0)
        create_tenant("zzsource")  # a new schema, migrated: the fleet's model
        slugs = [f"f{number:04d}" for number in range(tenants)]
        copy_schema("bench_sc_shared", "t_zzsource", [f"t_{slug}" for slug in slugs])
        Tenant.objects.bulk_create(
            Tenant(
                slug=slug,
                name=slug,
                server="shared",
                database_name=f"t_{slug}",
                status=TenantStatus.ACTIVE,
            )
            for slug in slugs
        )
    else:
        from benchmarks.request_path_project.customers.models import Client

        call_command("migrate_schemas", shared=True, interactive=False, verbosity=0)
        Client(schema_name="public", name="public").save(verbosity=0)
        Client(schema_name="zzsource", name="zzsource").save(verbosity=0)  # migrated
        names = [f"f{number:04d}" for number in range(tenants)]
        copy_schema("bench_sc_dt", "zzsource", names)
        Client.objects.bulk_create(Client(schema_name=name, name=name) for name in names)
    return {}


def provision(variant: str, count: int) -> dict[str, Any]:
    import django

    django.setup()
    timings: dict[str, list[float]] = {}
    if variant == "tenancy":
        from django.conf import settings
        from django.test.utils import override_settings

        from tenancy.provisioning import create_tenant
        from tenancy.template_databases import wait_for_spares

        create_tenant("warm-up")  # starts the first spare
        for number in range(count):
            wait_for_spares()  # the spare the previous one started making
            started = time.perf_counter()
            create_tenant(f"spared-{number}")
            timings.setdefault("spare", []).append(time.perf_counter() - started)
        wait_for_spares()
        with override_settings(TENANCY={**settings.TENANCY, "SPARE_DATABASES": 0}):
            for number in range(count):
                started = time.perf_counter()
                create_tenant(f"migrated-{number}")
                timings.setdefault("migrate", []).append(time.perf_counter() - started)
    else:
        from benchmarks.request_path_project.customers.models import Client

        kind = "clone" if os.environ.get("BENCH_BASE_SCHEMA") else "migrate"
        for number in range(count):
            started = time.perf_counter()
            Client(schema_name=f"{kind}{number}", name=kind).save(verbosity=0)
            timings.setdefault(kind, []).append(time.perf_counter() - started)
    return {kind: statistics.median(values) for kind, values in timings.items()}


def warm_connection(tenants: int, threads: int) -> dict[str, Any]:
    """tenancy only: the cost of a switch, and the peak sessions of ``threads`` threads."""
    import django

    django.setup()
    from django.contrib.auth.models import Group

    from benchmarks.postgres import maintenance_connection
    from tenancy import tenant_context
    from tenancy.connections import close_all
    from tenancy.models import Tenant

    fleet = list(Tenant.objects.filter(slug__startswith="f").order_by("slug")[:tenants])

    def per_query(sequence: list[Any], rounds: int = 2000) -> float:
        started = time.perf_counter()
        for number in range(rounds):
            with tenant_context(sequence[number % len(sequence)]):
                Group.objects.filter(pk=1).exists()
        return (time.perf_counter() - started) / rounds * 1e6

    per_query(fleet[:2], 200)  # warm up
    same = statistics.median(per_query(fleet[:1]) for _ in range(3))
    switching = statistics.median(per_query(fleet[:2]) for _ in range(3))
    close_all()

    peak, done = [0], threading.Event()

    def sessions(connection: Any) -> int:
        query = (  # clients only: autovacuum works on the database too
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = 'bench_sc_shared' AND backend_type = 'client backend'"
        )
        return int(connection.execute(query).fetchone()[0])

    with maintenance_connection() as connection:  # the closed ones have ended
        deadline = time.monotonic() + 5
        while sessions(connection) and time.monotonic() < deadline:
            time.sleep(0.01)

    def sample() -> None:
        with maintenance_connection() as connection:
            while not done.is_set():
                peak[0] = max(peak[0], sessions(connection))
                time.sleep(0.002)

    def serve(offset: int) -> None:
        try:
            for number in range(len(fleet)):
                with tenant_context(fleet[(offset + number) % len(fleet)]):
                    Group.objects.filter(pk=1).exists()
        finally:
            close_all()

    sampler = threading.Thread(target=sample)
    sampler.start()
    workers = [threading.Thread(target=serve, args=(n * 37,)) for n in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    served = time.perf_counter() - started
    done.set()
    sampler.join()
    return {
        "same_us": same,
        "switch_us": switching,
        "peak": peak[0],
        "queries": len(fleet) * threads,
        "seconds": served,
    }


def run_child(arguments: list[str]) -> None:
    variant, step, *rest = arguments
    if step == "prepare":
        answer = prepare(variant, int(rest[0]))
    elif step == "provision":
        answer = provision(variant, int(rest[0]))
    else:
        answer = warm_connection(int(rest[0]), int(rest[1]))
    print(json.dumps(answer))


# -- the run ------------------------------------------------------------------------


def drop_databases() -> None:
    """Drop the run's databases, and make the two main databases again."""
    from psycopg import sql

    from benchmarks.postgres import drop_databases, maintenance_connection

    drop_databases("bench_sc_")
    with maintenance_connection() as connection:
        for name in ("bench_sc_main", "bench_sc_dt"):
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        run_child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=1000, help="tenancy's fleet")
    parser.add_argument("--dt-tenants", type=int, default=200, help="django-tenants' fleet")
    parser.add_argument("--jobs-tenants", type=int, default=200)
    parser.add_argument("--provisions", type=int, default=5, help="per way (median)")
    options = parser.parse_args()
    started = time.perf_counter()

    bench_venv()
    generate_app(30, "thirty")
    drop_databases()
    tenants = max(options.tenants, 2 * options.jobs_tenants)
    child("tenancy", "prepare", str(tenants))
    child("django_tenants", "prepare", str(options.dt_tenants))
    print(f"(set-up: {time.perf_counter() - started:.0f} s)", flush=True)

    # 1. Nothing to migrate.
    manage("tenancy", "migrate_tenants")  # warm the page cache
    ours = statistics.median(manage("tenancy", "migrate_tenants") for _ in range(3))
    theirs = manage("django_tenants", "migrate_schemas", "--tenant")
    theirs_parallel = manage(
        "django_tenants", "migrate_schemas", "--tenant", "--executor", "multiprocessing"
    )
    ours_each, theirs_each = ours / (tenants + 1), theirs / (options.dt_tenants + 1)
    theirs_parallel_each = theirs_parallel / (options.dt_tenants + 1)

    # 2. One new migration on --jobs-tenants schemas.
    count = options.jobs_tenants
    group = [[arg for n in range(first, first + count) for arg in ("--tenant", f"f{n:04d}")]
             for first in (0, count)]  # fmt: skip
    jobs1 = manage("tenancy", "migrate_tenants", *group[0], "--jobs", "1", **PLUS)
    jobs4 = manage("tenancy", "migrate_tenants", *group[1], "--jobs", "4", **PLUS)
    dt_tenants = [f"f{n:04d}" for n in range(count)]
    if count != options.dt_tenants:
        raise SystemExit("--dt-tenants and --jobs-tenants must be equal for section 2")
    standard = manage("django_tenants", "migrate_schemas", "--tenant", **PLUS)
    manage("django_tenants", "migrate_schemas", "--tenant", "thirty", "0030_step", **PLUS)
    parallel = manage(
        "django_tenants", "migrate_schemas", "--tenant", "--executor", "multiprocessing", **PLUS
    )
    del dt_tenants

    # 3. Provisioning one tenant.
    ours_provision = child("tenancy", "provision", str(options.provisions))
    theirs_migrate = child("django_tenants", "provision", str(options.provisions))
    theirs_clone = child(
        "django_tenants", "provision", str(options.provisions), BENCH_BASE_SCHEMA="zzsource"
    )

    # 4. A warm connection.
    warm = child("tenancy", "warm", str(options.tenants), "8")
    drop_databases()

    versions = subprocess.run(
        [sys.executable, "-c", "import django, sys; print(django.get_version(), sys.version)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    spare, migrate = ours_provision["spare"], ours_provision["migrate"]
    lines = [
        f"Django {versions[0]}, Python {versions[1]}, django-tenants from PyPI in .venv-bench,"
        f" PostgreSQL at {os.environ['TENANCY_TEST_PG_1']}; tenant apps: contenttypes, auth,"
        " sessions and an app with 30 migrations.",
        "",
        "1. Nothing to migrate",
        f"   tenancy migrate_tenants, {tenants} schemas (median of 3): {ours:7.2f} s"
        f" ({ours_each * 1000:.1f} ms per schema)",
        f"   django-tenants migrate_schemas --tenant, {options.dt_tenants} schemas:"
        f" {theirs:7.2f} s"
        f" ({theirs_each * 1000:.1f} ms per schema)",
        f"   django-tenants, multiprocessing executor (4): {theirs_parallel:7.2f} s"
        f" ({theirs_parallel_each * 1000:.1f} ms per schema)",
        f"   ratio per schema: {theirs_each / ours_each:.0f}x (target >= 50x),"
        f" {theirs_parallel_each / ours_each:.0f}x against multiprocessing (target >= 25x)",
        "",
        f"2. One new migration on {count} schemas",
        f"   tenancy --jobs 1: {jobs1:6.2f} s   --jobs 4: {jobs4:6.2f} s",
        f"   django-tenants standard: {standard:6.2f} s   multiprocessing (4): {parallel:6.2f} s",
        f"   ratios: {standard / jobs1:.1f}x sequential, {parallel / jobs4:.1f}x with 4"
        f" processes, {min(standard, parallel) / min(jobs1, jobs4):.1f}x best against best"
        " (target >= 3x)",
        "",
        f"3. Provisioning one tenant (median of {options.provisions})",
        f"   tenancy, renaming a spare schema: {spare * 1000:7.1f} ms",
        f"   tenancy, a new schema migrated:   {migrate * 1000:7.1f} ms",
        f"   django-tenants auto_create_schema: {theirs_migrate['migrate'] * 1000:7.1f} ms",
        f"   django-tenants clone (TENANT_BASE_SCHEMA): {theirs_clone['clone'] * 1000:7.1f} ms",
        f"   ratios: {theirs_migrate['migrate'] / spare:.0f}x against auto_create_schema,"
        f" {theirs_clone['clone'] / spare:.0f}x against clone (target >= 20x; p50 < 50 ms)",
        "",
        "4. A warm connection (tenancy)",
        f"   a query on the same tenant as before: {warm['same_us']:6.0f} us;"
        f" on another tenant: {warm['switch_us']:6.0f} us"
        f" (the switch: {warm['switch_us'] - warm['same_us']:.0f} us)",
        f"   8 threads, {warm['queries']} queries over {options.tenants} tenants in"
        f" {warm['seconds']:.1f} s: peak {warm['peak']} server sessions on the shared database",
        "",
        f"total {time.perf_counter() - started:.0f} s",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
