#!/usr/bin/env python
"""Fleet migrations and provisioning, side by side with what users would do otherwise.

    scripts/with-postgres -n 1 .venv/bin/python benchmarks/migrations.py [--tenants 1000]

Prints three comparisons, each measured in this one run on the same cluster:
1. `migrate_tenants` with nothing to do on N tenants, against a loop of
   `manage.py migrate --database=<tenant>` (plain Django, each tenant a configured
   database), timed on a sample of tenants and scaled to N; and `migrate_tenants --check`
   answered from the migration ledger against reading every database (`--verify`).
2. One new migration applied to 200 tenants with --jobs 1 and with --jobs 4.
3. Provisioning one tenant from a spare copy of the template (the default) and by copying
   the template, against migrating it, the tenant apps being Django's auth, contenttypes
   and sessions plus an app with 100 migrations.
4. The peak memory of `migrate_tenants` with nothing to do on a tenth of the tenants and on
   all of them, with --jobs 1 and --jobs 4.
5. `migrate_tenants --check` and `--summary` from the migration ledger over 10,000 tenants.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from django.utils.timezone import now as timezone_now

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "benchmarks" / ".generated"


def generate_app(migrations: int = 100, app_name: str = "hundred") -> None:
    """An app (`hundred`) whose model grows one field per migration; `migrations_plus`
    holds the same migrations and one more."""
    app = GENERATED / app_name
    for package, count in (("migrations", migrations), ("migrations_plus", migrations + 1)):
        directory = app / package
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "__init__.py").write_text("")
        for number in range(1, count + 1):
            name = f"{number:04d}_step"
            if number == 1:
                body = (
                    "    operations = [migrations.CreateModel('Item', [('id', "
                    "models.BigAutoField(primary_key=True)), ('name', models.CharField("
                    "max_length=100))])]\n"
                )
                dependencies = "[]"
            else:
                body = (
                    f"    operations = [migrations.AddField('item', 'field_{number}', "
                    "models.CharField(max_length=50, null=True))]\n"
                )
                dependencies = f"[({app_name!r}, '{number - 1:04d}_step')]"
            (directory / f"{name}.py").write_text(
                "from django.db import migrations, models\n\n\n"
                "class Migration(migrations.Migration):\n"
                f"    dependencies = {dependencies}\n{body}"
            )
    (app / "__init__.py").write_text("")
    fields = "".join(
        f"    field_{n} = models.CharField(max_length=50, null=True)\n"
        for n in range(2, migrations + 1)
    )
    (app / "models.py").write_text(
        "from django.db import models\n\n\nclass Item(models.Model):\n"
        f"    name = models.CharField(max_length=100)\n{fields}"
    )


def environment(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "benchmarks.settings",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(GENERATED)]),
        **extra,
    }


def manage(*args: str, check: bool = True, **extra: str) -> float:
    """Run manage.py in a new process, as a user would; its wall time in seconds."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=environment(**extra),
        check=check,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def peak_memory(*args: str) -> int:
    """Run manage.py in a new process; the peak resident memory, in MB, of the largest
    process it was or started (the command, or one of its --jobs workers)."""
    wrapper = (
        "import resource, subprocess, sys\n"
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", wrapper, sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=environment(),
        check=True,
        capture_output=True,
        text=True,
    )
    return int(done.stdout.split()[-1]) // 1024  # Linux reports kilobytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--baseline-sample", type=int, default=10)
    parser.add_argument("--jobs-tenants", type=int, default=200)
    parser.add_argument("--ledger-tenants", type=int, default=10000)
    options = parser.parse_args()

    generate_app()
    os.environ.update(environment())
    sys.path[:0] = [str(ROOT), str(GENERATED)]
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.test.utils import override_settings

    from tenancy.backends import get_server
    from tenancy.conf import tenancy_settings
    from tenancy.models import Tenant, TenantStatus
    from tenancy.provisioning import create_tenant
    from tenancy.template_databases import wait_for_spares

    server = get_server("fleet")
    for name in server.list_databases():
        if name.startswith("bench_") and name != "bench_main":
            server.drop_database(name, allow_template=True)
    with server._cursor() as cursor:  # tenancy refuses to drop the main database itself
        cursor.execute("DROP DATABASE IF EXISTS bench_main WITH (FORCE)")
    server.create_database("bench_main")
    call_command("migrate_tenants", verbosity=0, stdout=open(os.devnull, "w"))  # noqa: SIM115

    print(
        f"Benchmarks on PostgreSQL at {settings.DATABASES['default']['HOST']}:"
        f"{settings.DATABASES['default']['PORT']}, Python {sys.version.split()[0]}, "
        f"Django {django.get_version()}"
    )

    # 3. Provisioning: from a spare and by copying the template, against migrating.
    create_tenant("warm-up")  # builds the template
    spared = []
    for i in range(5):
        wait_for_spares()  # the spare the previous one started making in the background
        started = time.perf_counter()
        create_tenant(f"spared-{i}")
        spared.append(time.perf_counter() - started)
    wait_for_spares()
    copied = []
    with override_settings(TENANCY={**settings.TENANCY, "SPARE_DATABASES": 0}):
        for i in range(5):
            started = time.perf_counter()
            create_tenant(f"copied-{i}")
            copied.append(time.perf_counter() - started)
    migrated = []
    with override_settings(TENANCY={**settings.TENANCY, "USE_TEMPLATE_DATABASES": False}):
        for i in range(3):
            started = time.perf_counter()
            create_tenant(f"migrated-{i}")
            migrated.append(time.perf_counter() - started)

    # The fleet: copies of the template, registered as active tenants.
    def add_tenants(prefix: str, count: int, server_name: str) -> list[str]:
        names = []
        for i in range(count):
            tenant = Tenant(
                slug=f"{prefix}-{i:04d}",
                name=prefix,
                server=server_name,
                status=TenantStatus.ACTIVE,
            )
            tenant.database_name = tenancy_settings.database_name_for(tenant.slug)
            get_server(server_name).clone_database("bench__template", tenant.database_name)
            tenant.save()
            names.append(tenant.database_name)
        return names

    started = time.perf_counter()
    fleet = add_tenants(
        "fleet", options.tenants - len(spared) - len(copied) - len(migrated) - 1, "fleet"
    )
    print(f"(set-up: {options.tenants} tenant databases in {time.perf_counter() - started:.0f}s)")

    # 1. No-op migrate_tenants against a loop of plain `migrate --database`.
    manage("migrate_tenants", "--server", "fleet")  # warm the page cache
    noop = [manage("migrate_tenants", "--server", "fleet") for _ in range(3)]
    sample = fleet[: options.baseline_sample]
    loop = [manage("migrate", "--database", name, BENCH_STATIC_TENANTS=name) for name in sample]
    per_tenant_loop = statistics.median(loop)
    ours = statistics.median(noop)
    ours_per_tenant = ours / options.tenants
    # 1b. Is anything left to migrate? From the ledger, and by reading every database.
    ledger_check = statistics.median(
        manage("migrate_tenants", "--check", "--server", "fleet") for _ in range(3)
    )
    verify_check = statistics.median(
        manage("migrate_tenants", "--check", "--verify", "--server", "fleet") for _ in range(3)
    )
    startup = statistics.median(
        manage("migrate_tenants", "--check", "--server", "none") for _ in range(3)
    )

    # 4. Memory against the number of tenants: no-op runs on a tenth and on all of them.
    tenth = [arg for i in range(len(fleet) // 10) for arg in ("--tenant", f"fleet-{i:04d}")]
    memory = {
        (count, jobs): peak_memory("migrate_tenants", *selection, "--jobs", str(jobs))
        for count, selection in ((len(fleet) // 10, tenth), (len(fleet), ["--server", "fleet"]))
        for jobs in (1, 4)
    }

    # 2. One new migration on N tenants, --jobs 1 and --jobs 4.
    add_tenants("jobs1", options.jobs_tenants, "jobs1")
    add_tenants("jobs4", options.jobs_tenants, "jobs4")
    plus = {"BENCH_HUNDRED_MIGRATIONS": "hundred.migrations_plus"}
    manage("migrate", "--database", "default", **plus)
    jobs1 = manage("migrate_tenants", "--server", "jobs1", "--jobs", "1", **plus)
    jobs4 = manage("migrate_tenants", "--server", "jobs4", "--jobs", "4", **plus)

    # 5. The ledger at 10,000 tenants: registry rows with ledger entries (no databases:
    # nothing here reads one), --check from the ledger and --summary.
    ledger_tenants = options.ledger_tenants
    add_ledger_rows(ledger_tenants)
    ledger_times = {
        args[0]: statistics.median(
            manage("migrate_tenants", *args, "--server", "ledger", check=False) for _ in range(3)
        )
        for args in (("--check",), ("--summary",))
    }
    empty = statistics.median(
        manage("migrate_tenants", "--check", "--server", "none") for _ in range(3)
    )

    median_migrated, median_copied = statistics.median(migrated), statistics.median(copied)
    median_spared = statistics.median(spared)
    loop_total = per_tenant_loop * options.tenants
    lines = [
        "",
        f"1. Nothing to migrate, {options.tenants} tenants",
        f"   migrate_tenants, one process (median of 3): {ours:8.2f} s"
        f" ({ours_per_tenant * 1000:.1f} ms per tenant)",
        f"   loop of `manage.py migrate --database=X`:   {loop_total:8.2f} s"
        f" ({per_tenant_loop * 1000:.0f} ms per tenant: median of {len(sample)} runs,"
        f" x {options.tenants})",
        f"   ratio: {per_tenant_loop / ours_per_tenant:.0f}x (target >= 50x)",
        f"   --check from the ledger: {ledger_check:6.2f} s; reading every database "
        f"(--verify): {verify_check:6.2f} s; the command with no tenant: {startup:6.2f} s",
        f"   per tenant above the start-up: ledger "
        f"{(ledger_check - startup) / options.tenants * 1000:.2f} ms, --verify "
        f"{(verify_check - startup) / options.tenants * 1000:.2f} ms, a no-op run "
        f"{(ours - startup) / options.tenants * 1000:.2f} ms",
        "",
        f"2. One new migration on {options.jobs_tenants} tenants",
        f"   --jobs 1: {jobs1:6.2f} s   --jobs 4: {jobs4:6.2f} s   ratio: {jobs1 / jobs4:.2f}x",
        "",
        "3. Provisioning one tenant (contrib auth, contenttypes, sessions + 100 migrations)",
        f"   by migrating:         {median_migrated:6.3f} s (median of {len(migrated)})",
        f"   copying the template: {median_copied:6.3f} s (median of {len(copied)};"
        f" {median_migrated / median_copied:.1f}x)",
        f"   renaming a spare:     {median_spared:6.3f} s (median of {len(spared)};"
        f" {median_migrated / median_spared:.1f}x)",
        f"   ratio, the default (a spare) against migrating: "
        f"{median_migrated / median_spared:.1f}x (target >= 10x)",
        "",
        "4. Peak memory of the largest process, nothing to migrate (command or worker)",
        *(
            f"   {count:5d} tenants, --jobs {jobs}: {megabytes} MB"
            for (count, jobs), megabytes in memory.items()
        ),
        "",
        f"5. The migration ledger, {ledger_tenants} tenants (median of 3, whole command)",
        f"   --check: {ledger_times['--check']:.2f} s"
        f"   --summary: {ledger_times['--summary']:.2f} s"
        f"   (the command with no tenant: {empty:.2f} s; target for --check: under 1 s)",
    ]
    print("\n".join(lines))


def add_ledger_rows(count: int) -> None:
    """``count`` active tenants on server "ledger" whose ledger entries hold the set of a
    migrated tenant (their databases are never made: nothing in section 5 reads them)."""
    from tenancy.models import Tenant, TenantMigrations, TenantStatus

    applied = TenantMigrations.objects.exclude(applied=None).values_list("applied_id", flat=True)
    fingerprint = applied.first()
    tenants = Tenant.objects.bulk_create(
        Tenant(
            slug=f"ledger-{i:05d}",
            name="ledger",
            server="ledger",
            database_name=f"bench_ledger_{i:05d}",
            status=TenantStatus.ACTIVE,
        )
        for i in range(count)
    )
    now = timezone_now()
    TenantMigrations.objects.bulk_create(
        TenantMigrations(tenant=tenant, applied_id=fingerprint, recorded_at=now)
        for tenant in Tenant.objects.filter(server="ledger")
    )
    assert len(tenants) == count


if __name__ == "__main__":
    main()
