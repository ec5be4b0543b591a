"""The migration ledger: every path that migrates a tenant records what its database has
applied; checks read the ledger instead of every database; and the ledger never shows a
tenant current when it is not (a failed run, a migration added to the code, a backwards
migrate of Django's own, a tenant it never read)."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tenancy import ledger
from tenancy.migration import applied_migrations
from tenancy.models import Tenant, TenantMigrations
from tests.conftest import FLEET
from tests.settings import BACKEND, SERVER_2

SLUGS = FLEET


def run(*args: str) -> tuple[dict[str, dict], str, int]:
    """migrate_tenants --json: its results per slug, its error, its exit status."""
    out = io.StringIO()
    error, status = "", 0
    try:
        call_command("migrate_tenants", *args, "--json", stdout=out)
    except CommandError as exc:
        error, status = str(exc), 1
    except SystemExit as exc:
        status = int(exc.code or 0)
    results = {}
    for line in out.getvalue().splitlines():
        result = json.loads(line)
        if result.get("slug") not in (None, "default"):
            results[result["slug"]] = result
    return results, error, status


def djangos_migrate(slug: str, target: str) -> None:
    """Django's own migrate of tenantapp to ``target`` on the tenant's connection."""
    out = io.StringIO()
    call_command(
        "tenant_command",
        "--tenant",
        slug,
        "migrate",
        "tenantapp",
        target,
        "--verbosity",
        "0",
        stdout=out,
        stderr=out,
    )


def statuses(results: dict[str, dict]) -> dict[str, str]:
    return {slug: result["status"] for slug, result in results.items()}


def recorded(tenant: Tenant) -> set[tuple[str, str]]:
    entry = TenantMigrations.objects.select_related("applied").get(tenant=tenant)
    return {tuple(name.split(".", 1)) for name in json.loads(entry.applied.migrations)}


def test_provisioning_and_migrating_record_what_each_database_has(fleet, migrations):
    from tenancy.connections import connection_for

    for tenant in fleet:  # provisioning wrote it
        assert recorded(tenant) == applied_migrations(connection_for(tenant))
    migrations("tests.migrations_v2")
    # The code has a migration the ledger's sets lack: behind, without reading a database.
    results, _, status = run("--check")
    assert statuses(results) == dict.fromkeys(SLUGS, "pending")
    assert status == 1
    results, error, _ = run()
    assert error == ""
    for tenant in fleet:
        assert ("tenantapp", "0002_note_text_index") in recorded(tenant)
        assert recorded(tenant) == applied_migrations(connection_for(tenant))
    assert ledger.fleet_summary()["current"] == 3
    # One set stored for the whole fleet.
    fingerprints = set(TenantMigrations.objects.values_list("applied_id", flat=True))
    assert len(fingerprints) == 1


def test_checks_answer_from_the_ledger_and_verify_reads_the_databases(fleet, settings):
    down = (
        {**SERVER_2, "PORT": "1"}
        if BACKEND == "postgresql"
        else {**SERVER_2, "DIRECTORY": "/dev/null/nowhere"}
    )
    settings.TENANCY = {
        **settings.TENANCY,
        "SERVERS": {**settings.TENANCY["SERVERS"], "two": down},
    }
    # Server two is down: the ledger still answers for beta-two, read before.
    results, error, status = run("--check")
    assert statuses(results) == dict.fromkeys(SLUGS, "up-to-date")
    assert (error, status) == ("", 0)
    # --verify reads every database: beta-two's cannot be read, and the ledger says so.
    results, error, _ = run("--check", "--verify")
    assert results["beta-two"]["status"] == "failed"
    assert "1 tenant(s) failed: beta-two" in error
    results, error, _ = run("--list")
    assert statuses(results) == {
        "beta-two": "failed",
        "gamma": "up-to-date",
        "omega": "up-to-date",
    }
    summary = ledger.fleet_summary()
    assert (summary["current"], summary["failed"]) == (2, 1)
    assert list(summary["errors"]) == ["beta-two"]


def test_a_failed_run_is_never_current(fleet, migrations):
    migrations("tests.migrations_failing")  # fails for beta-two
    run()
    beta = Tenant.objects.get(slug="beta-two")
    entry = TenantMigrations.objects.get(tenant=beta)
    assert "this migration fails for beta" in entry.error
    # Its set is what its database has after the rollback: without the failed migration.
    from tenancy.connections import connection_for

    assert recorded(beta) == applied_migrations(connection_for(beta))
    out = io.StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("migrate_tenants", "--summary", stdout=out)
    assert exited.value.code == 1
    line = out.getvalue().strip()
    assert line.startswith("3 tenant(s): 2 current, 0 behind, 1 failed, 0 never read")
    assert "beta-two: " in line


def test_a_backwards_migrate_of_djangos_own_is_recorded(fleet, migrations):
    migrations("tests.migrations_v2")
    run()
    djangos_migrate("gamma", "0001_initial")
    results, _, status = run("--check")
    assert statuses(results) == {
        "beta-two": "up-to-date",
        "gamma": "pending",
        "omega": "up-to-date",
    }
    assert results["gamma"]["pending"] == ["tenantapp.0002_note_text_index"]
    assert status == 1


def test_a_tenant_never_read_is_read_once_then_answered_from_the_ledger(fleet):
    lost = Tenant.objects.create(slug="new", name="New", server="one", status="active")
    assert not TenantMigrations.objects.filter(tenant=lost).exists()
    assert ledger.fleet_summary()["unknown"] == 1
    results, _, _ = run("--list")
    # Its database does not exist: read, failed, and recorded as such (never current).
    assert results["new"]["status"] == "failed"
    assert TenantMigrations.objects.get(tenant=lost).error
    assert ledger.fleet_summary()["failed"] == 1


def test_a_ledger_gone_stale_never_keeps_a_tenant_from_being_migrated(fleet, migrations):
    """Tenants the ledger calls current are read first (many at once); one that is in
    fact behind (its ledger entry written by hand, say) is migrated all the same."""
    from tenancy.connections import connection_for

    migrations("tests.migrations_v2")
    gamma = fleet[1]
    stale = applied_migrations(connection_for(gamma)) | {("tenantapp", "0002_note_text_index")}
    ledger.record(gamma, stale)
    assert ledger.states([gamma])[gamma.pk].status == ledger.CURRENT  # what it claims
    results, error, _ = run()
    assert error == ""
    assert statuses(results) == dict.fromkeys(SLUGS, "migrated")
    assert ("tenantapp", "0002_note_text_index") in applied_migrations(connection_for(gamma))
    # And the ledger says so after the run (not the set its check read before).
    assert ledger.fleet_summary()["current"] == 3
    assert run("--check")[2] == 0


def test_a_restored_tenant_is_recorded_from_its_restored_database(fleet, tmp_path):
    from tenancy.backups import backup_tenant, restore_tenant

    gamma = fleet[1]
    path = backup_tenant(gamma, tmp_path).path
    ledger.record(gamma, None, error="unreachable before the restore")
    restore_tenant(path, replace=True)
    assert ledger.states([gamma])[gamma.pk].status == ledger.CURRENT
    restore_tenant(path, as_slug="gamma-copy")
    copy = Tenant.objects.get(slug="gamma-copy")
    assert recorded(copy) == recorded(gamma)


def test_a_migrate_of_djangos_own_that_fails_is_never_taken_as_current(fleet, migrations):
    """Django's migrate commits migration by migration: one that fails (or is killed)
    after some may have left the tenant anywhere, so the ledger knows nothing of it."""
    from django.db.migrations.exceptions import IrreversibleError

    migrations("tests.migrations_irreversible")
    run()
    with pytest.raises(IrreversibleError, match="one_way"):
        djangos_migrate("gamma", "zero")
    gamma = Tenant.objects.get(slug="gamma")
    assert ledger.states([gamma])[gamma.pk].status == ledger.FAILED
    results, _, _ = run("--check")
    assert results["gamma"]["status"] == "failed"
    assert "did not finish" in results["gamma"]["error"]
    results, _, _ = run("--check", "--verify")  # read again: as it is
    assert statuses(results) == dict.fromkeys(SLUGS, "up-to-date")


def test_entries_written_together_fail_alone(fleet, caplog):
    """A fleet run writes its entries in batches; an entry that cannot be written (its
    tenant deleted meanwhile) fails alone, and the others are written."""
    from django.db import connections

    from tenancy.connections import alias_for

    caplog.set_level("CRITICAL", logger="tenancy.ledger")
    TenantMigrations.objects.all().delete()
    beta, gamma, omega = fleet
    applied = {t.slug: applied_migrations(connections[alias_for(t)]) for t in fleet}
    gone = Tenant(pk=omega.pk + 1000, slug="gone", database_name="gone", server="one")
    batch = ledger.Batch(known={}, size=2)
    batch.add(ledger.Entry(beta, applied[beta.slug]))
    batch.add(ledger.Entry(gone, applied[gamma.slug]))  # written with the one before
    assert {entry.tenant_id for entry in TenantMigrations.objects.all()} == {beta.pk}
    assert [tenant.slug for tenant in batch.unrecorded] == ["gone"]
    batch.add(ledger.Entry(gamma, applied[gamma.slug], error="boom"))
    assert TenantMigrations.objects.count() == 1  # waits for the next flush
    batch.flush()
    assert recorded(beta) == applied[beta.slug]
    assert TenantMigrations.objects.get(tenant=gamma).error == "boom"
    assert set(batch.known) == {beta.pk, gamma.pk}
    assert ledger.states([beta, gamma])[beta.pk].status == ledger.CURRENT


def test_an_entry_read_before_the_one_held_never_replaces_it(fleet):
    """A fleet run's entry written late (batched) after another process recorded the
    tenant again (a restore, a migrate of Django's own) leaves the later one."""
    from datetime import timedelta

    from django.db import connections
    from django.utils import timezone

    from tenancy.connections import alias_for

    beta = fleet[0]
    applied = applied_migrations(connections[alias_for(beta)])
    behind = applied - {max(applied)}
    ledger.record(beta, applied)
    earlier = timezone.now() - timedelta(seconds=5)
    assert ledger.record_many([ledger.Entry(beta, behind, read_at=earlier)]) == []
    assert recorded(beta) == applied
    assert ledger.record_many([ledger.Entry(beta, behind, read_at=timezone.now())]) == []
    assert recorded(beta) == behind
    assert ledger.states([beta])[beta.pk].status == ledger.BEHIND


def test_a_set_gone_from_the_ledger_is_written_again_with_the_entry(fleet):
    """An entry naming a set this process stored before is written alone, in one
    statement; should the set be gone all the same (tables flushed), the entry is
    written again with its set."""
    from django.db import connection, connections
    from django.test.utils import CaptureQueriesContext

    from tenancy.connections import alias_for
    from tenancy.models import MigrationSet

    beta = fleet[0]
    applied = applied_migrations(connections[alias_for(beta)])
    assert not connection.in_atomic_block  # where the one statement is used
    assert ledger.record(beta, applied)
    with CaptureQueriesContext(connection) as queries:
        assert ledger.record(beta, applied)
    assert [query["sql"].split()[:3] for query in queries] == [
        ["INSERT", "INTO", f'"{TenantMigrations._meta.db_table}"']
    ]
    TenantMigrations.objects.all().delete()
    MigrationSet.objects.all().delete()
    assert ledger.record(beta, applied)
    assert recorded(beta) == applied
    assert ledger.states([beta])[beta.pk].status == ledger.CURRENT


def test_a_project_without_time_zones_records_too(fleet, settings):
    TenantMigrations.objects.all().delete()
    settings.USE_TZ = False
    results, error, status = run("--check", "--verify")
    assert (error, status) == ("", 0)
    assert set(statuses(results).values()) == {"up-to-date"}
    assert TenantMigrations.objects.count() == len(fleet)
    assert ledger.states(fleet)[fleet[0].pk].status == ledger.CURRENT
