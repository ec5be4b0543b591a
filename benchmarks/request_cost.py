#!/usr/bin/env python
"""Cost of a request after a process has served 1, 1,000 and 10,000 distinct tenants.

    .venv/bin/python benchmarks/request_cost.py [--tenants 10000] [--requests 2000]

Drives the example project (SQLite, one file per tenant) through Django's WSGI handler in
this process, as a WSGI server would: request_started, the middleware, the view, the
response, request_finished. Each tenant is one request to /api/tasks/ on its own host.
Also prints the memory a tenant's registration and its entry in the resolution cache cost
(tracemalloc, 10,000 tenants).
The same tenant's request is timed after 1, 1,000 and 10,000 distinct tenants have been
served. For comparison, the last row times it again with the 10,000 tenants' aliases
added to DATABASES, which is where a library that registers every tenant it serves as a
Django database ends up (Django walks DATABASES on every request); that row times a tenth
of the requests, as each is slow.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def setup(data: Path) -> None:
    os.environ["TENANCY_EXAMPLE_DATA"] = str(data)
    os.environ["DJANGO_DEBUG"] = "0"
    os.environ["DJANGO_SETTINGS_MODULE"] = "example_project.settings"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def create_fleet(count: int) -> list[str]:
    """``count`` active tenants with a host each; databases copied from the first one."""
    from django.core.management import call_command

    from example_project.projects.models import Project, Task
    from tenancy import tenant_context
    from tenancy.backends.sqlite import sqlite_path
    from tenancy.conf import tenancy_settings
    from tenancy.connections import connection_for, unregister_all
    from tenancy.models import Domain, Tenant, TenantStatus
    from tenancy.provisioning import create_tenant

    call_command("migrate", verbosity=0)
    first = create_tenant("t00000", domains=["t00000.localhost"])
    with tenant_context(first):
        project = Project.objects.create(name="Launch")
        Task.objects.create(project=project, title="Write the docs")
    source = sqlite_path(connection_for(first).settings_dict["NAME"])
    unregister_all()
    slugs = [f"t{i:05d}" for i in range(count)]
    tenants = Tenant.objects.bulk_create(
        Tenant(
            slug=slug,
            name=slug,
            server="main",
            database_name=tenancy_settings.database_name_for(slug),
            status=TenantStatus.ACTIVE,
        )
        for slug in slugs[1:]
    )
    Domain.objects.bulk_create(
        Domain(domain=f"{tenant.slug}.localhost", tenant=tenant, is_primary=True)
        for tenant in tenants
    )
    for tenant in tenants:
        shutil.copyfile(source, source.with_name(f"{tenant.database_name}.sqlite3"))
    add_member([first, *tenants])
    return slugs


MEMBER = "bench"


def add_member(tenants: list[Any]) -> None:
    """The user the benchmark's requests are signed in as, a member of every tenant: the
    example project serves tenant pages to members only."""
    from django.contrib.auth.models import User

    from tenancy.models import Membership

    user, _ = User.objects.get_or_create(username=MEMBER)
    Membership.objects.bulk_create(
        [Membership(user=user, tenant=tenant) for tenant in tenants], ignore_conflicts=True
    )


class Server:
    """Calls Django's WSGI handler the way a WSGI server does."""

    def __init__(self) -> None:
        from django.contrib.auth.models import User
        from django.core.handlers.wsgi import WSGIHandler

        self.handler = WSGIHandler()
        self.member = User.objects.get(username=MEMBER)
        self.cookies: dict[str, str] = {}

    def cookie(self, host: str) -> str:
        """The member's session on ``host``'s tenant, signed in there on first use, as a
        browser would be (a session is bound to the tenant it was signed in on)."""
        if host not in self.cookies:
            from django.test import Client

            from tenancy import tenant_context

            client = Client()
            with tenant_context(host.partition(".")[0]):  # the hosts are <slug>.localhost
                client.force_login(self.member)
            self.cookies[host] = f"sessionid={client.cookies['sessionid'].value}"
        return self.cookies[host]

    def get(self, host: str, path: str = "/api/tasks/") -> bytes:
        status, body = self.request(host, path)
        if not status.startswith("200"):
            raise SystemExit(f"{host}{path}: {status}")
        return body

    def request(self, host: str, path: str = "/api/tasks/") -> tuple[str, bytes]:
        from benchmarks.wsgi import wsgi_get

        return wsgi_get(self.handler, host, path, self.cookie(host))


def per_request_ms(server: Server, slug: str, requests: int) -> float:
    """Median over batches of the time per request for ``slug``."""
    expected = f'"tenant": "{slug}"'.encode()
    batches = []
    for _ in range(10):
        started = time.perf_counter()
        for _ in range(requests // 10):
            body = server.get(f"{slug}.localhost")
        batches.append((time.perf_counter() - started) / (requests // 10))
        if expected not in body:
            raise SystemExit(f"{slug}: wrong tenant in {body[:200]!r}")
    return statistics.median(batches) * 1000


def registration_bytes(count: int) -> float:
    """Memory per tenant of registering ``count`` tenants in this process."""
    import gc
    import tracemalloc

    from tenancy.connections import register
    from tenancy.models import Tenant

    tenants = [Tenant(slug=f"m{i:05d}", server="main") for i in range(count)]
    for tenant in tenants:
        tenant.database_name = f"tenant_{tenant.slug}"
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for tenant in tenants:
        register(tenant)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / count


def cache_bytes(count: int) -> float:
    """Memory per tenant of ``count`` tenants in the resolution cache (its default size
    is 10,000), each found by its host."""
    import gc
    import tracemalloc

    from tenancy import registry_cache
    from tenancy.models import Tenant

    registry_cache.forget_all()
    tenants = {f"{tenant.slug}.localhost": tenant for tenant in Tenant.objects.all()[:count]}
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for host in tenants:
        registry_cache.lookup("host", host, tenants.__getitem__)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    cached, _ = registry_cache.cached_counts()
    assert cached == min(count, len(tenants)), cached
    return (after - before) / cached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=2_000)
    args = parser.parse_args()
    checkpoints = sorted({1, min(1_000, args.tenants), args.tenants})
    with tempfile.TemporaryDirectory(prefix="tenancy-bench-") as data:
        setup(Path(data))
        import django
        from django.db import connections

        from tenancy.connections import attached_aliases, connection_settings, registered_aliases
        from tenancy.models import Tenant
        from tenancy.registry_cache import cached_counts

        started = time.perf_counter()
        slugs = create_fleet(args.tenants)
        print(
            f"Django {django.get_version()}, Python {sys.version.split()[0]}, SQLite; "
            f"{args.tenants} tenants set up in {time.perf_counter() - started:.1f} s; "
            f"{args.requests} timed requests per row."
        )
        server = Server()
        timed = slugs[0]
        rows = []
        served = 0
        for checkpoint in checkpoints:
            while served < checkpoint:
                server.get(f"{slugs[served]}.localhost")
                served += 1
            rows.append(
                (
                    f"after {served:,} tenant{'s' if served > 1 else ''} served",
                    per_request_ms(server, timed, args.requests),
                    len(registered_aliases()),
                    cached_counts()[0],
                    len(connections.settings),
                )
            )
            assert attached_aliases() == [], "a tenant connection outlived its request"
        # The alternative: every tenant served registered in DATABASES.
        databases = dict(connections.settings)
        for tenant in Tenant.objects.exclude(slug=timed).iterator():
            databases[f"tenant:{tenant.slug}"] = connection_settings(tenant)
        connections.settings.update(databases)
        rows.append(
            (
                f"same, {args.tenants:,} aliases in DATABASES",
                per_request_ms(server, timed, max(100, args.requests // 10)),
                len(registered_aliases()),
                cached_counts()[0],
                len(connections.settings),
            )
        )
        memory = registration_bytes(args.tenants)
        cached_memory = cache_bytes(args.tenants)
    print(f"{'':38} {'ms/request':>10} {'registered':>10} {'cached':>10} {'DATABASES':>10}")
    for label, ms, registered, cached, configured in rows:
        print(f"{label:38} {ms:10.3f} {registered:10,} {cached:10,} {configured:10,}")
    base = rows[0][1]
    print(
        f"ratio {rows[-2][0].removeprefix('after ')} / 1 tenant served: "
        f"{rows[-2][1] / base:.2f} (target <= 1.1); "
        f"aliases in DATABASES / 1 tenant served: {rows[-1][1] / base:.1f}"
    )
    print(f"memory per registered tenant: {memory / 1024:.1f} KB (target < 10 KB)")
    print(f"memory per tenant in the resolution cache: {cached_memory / 1024:.2f} KB")


if __name__ == "__main__":
    main()
