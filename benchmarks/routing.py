#!/usr/bin/env python
"""The cost of tenant routing on an ORM read, against plain single-database Django.

    scripts/with-postgres -n 1 .venv/bin/python benchmarks/routing.py [--queries 20000]

Both sides read one row by primary key from the same table on the same PostgreSQL cluster
over a warm connection, each in its own process:
- plain Django: the database is `default`, no router, no tenancy installed;
- tenancy: the same database is a tenant's, reached through TenantRouter inside
  `tenant_context`.
Rounds alternate between the two to spread any drift of the machine evenly. A third
figure is a tenant switch: entering and leaving `tenant_context` around the same read,
alternating between two tenants whose connections are warm.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.postgres import maintenance_connection, server  # noqa: E402

DATABASES = ("bench_routing_a", "bench_routing_b")


def configure(mode: str) -> None:
    import django
    from django.conf import settings

    common: dict[str, Any] = {
        "SECRET_KEY": "benchmarks-only",
        "USE_TZ": True,
        "DEFAULT_AUTO_FIELD": "django.db.models.BigAutoField",
    }
    if mode == "plain":
        settings.configure(
            **common,
            INSTALLED_APPS=["example_project.projects"],
            DATABASES={"default": {**server(), "NAME": DATABASES[0]}},
        )
    else:
        settings.configure(
            **common,
            INSTALLED_APPS=["tenancy", "example_project.projects"],
            DATABASES={"default": {**server(), "NAME": "bench_routing_main"}},
            DATABASE_ROUTERS=["tenancy.routers.TenantRouter"],
            TENANCY={
                "TENANT_APPS": ["example_project.projects"],
                "SERVERS": {"pg": server()},
                "DEFAULT_SERVER": "pg",
                "DATABASE_NAME": "bench_routing_{slug}",
            },
        )
    django.setup()


def prepare() -> None:
    """The main database, and two tenant databases with one task each."""
    from psycopg import sql

    with maintenance_connection() as connection:
        for name in ("bench_routing_main", *DATABASES):
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    configure("tenancy")
    from django.core.management import call_command

    from example_project.projects.models import Project, Task
    from tenancy import tenant_context
    from tenancy.models import Tenant, TenantStatus
    from tenancy.provisioning import provision_tenant

    call_command("migrate", verbosity=0)
    for slug in ("a", "b"):
        tenant = Tenant.objects.create(slug=slug, name=slug, status=TenantStatus.PROVISIONING)
        provision_tenant(tenant)
        with tenant_context(tenant):
            Task.objects.create(project=Project.objects.create(name=slug), title=slug)


def read_by_pk(queries: int) -> float:
    """Microseconds per read of the one task, after a warm-up, wherever it is routed."""
    from example_project.projects.models import Task

    pk = Task.objects.get().pk
    for _ in range(500):
        Task.objects.get(pk=pk)
    started = time.perf_counter()
    for _ in range(queries):
        Task.objects.get(pk=pk)
    return (time.perf_counter() - started) / queries * 1e6


def measure(mode: str, queries: int) -> None:
    """Prints microseconds per read (and per read with a switch) for one round."""
    configure(mode)
    if mode == "plain":
        print(read_by_pk(queries))
        return
    from example_project.projects.models import Task
    from tenancy import tenant_context
    from tenancy.models import Tenant

    a, b = Tenant.objects.get(slug="a"), Tenant.objects.get(slug="b")
    with tenant_context(a):
        read = read_by_pk(queries)
        pk_a = Task.objects.get().pk
    with tenant_context(b):
        pk_b = Task.objects.get().pk
    started = time.perf_counter()
    for _ in range(queries // 2):
        with tenant_context(a):
            Task.objects.get(pk=pk_a)
        with tenant_context(b):
            Task.objects.get(pk=pk_b)
    switch = (time.perf_counter() - started) / (queries // 2 * 2) * 1e6
    print(read, switch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--measure", choices=["plain", "tenancy"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure, args.queries)
        return
    prepare_process = subprocess.run(
        [sys.executable, "-c", "import benchmarks.routing as r; r.prepare()"],
        cwd=ROOT,
        check=False,
    )
    if prepare_process.returncode:
        raise SystemExit("preparing the databases failed")
    plain, routed, switches = [], [], []
    for _ in range(args.rounds):
        for mode in ("plain", "tenancy"):
            output = subprocess.run(
                [sys.executable, __file__, "--measure", mode, "--queries", str(args.queries)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()
            if mode == "plain":
                plain.append(float(output[0]))
            else:
                routed.append(float(output[0]))
                switches.append(float(output[1]))
    import django

    print(
        f"Django {django.get_version()}, Python {sys.version.split()[0]}, PostgreSQL at "
        f"{os.environ['TENANCY_TEST_PG_1']}; {args.rounds} rounds x {args.queries} reads."
    )
    p, r, s = (statistics.median(values) for values in (plain, routed, switches))
    print(f"{'read by pk, plain single-database Django':48} {p:8.1f} us")
    print(f"{'read by pk, tenancy (TenantRouter)':48} {r:8.1f} us")
    print(f"{'read by pk inside a tenant switch (a, b, a, ...)':48} {s:8.1f} us")
    print(f"ratio tenancy / plain: {r / p:.3f} (target <= 1.05)")
    print(f"tenant switch (enter, exit, warm connection): {s - r:.1f} us over the read itself")


if __name__ == "__main__":
    main()
