"""Deleting with a grace period: an archived tenant is never served, its data is kept
read-only until purge_tenants drops it, and reactivate_tenant brings it back as it was."""

from __future__ import annotations

import io
import os
import sqlite3
import stat
from datetime import timedelta

import psycopg
import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, transaction
from django.db.migrations.recorder import MigrationRecorder
from django.test import RequestFactory
from django.utils import timezone

from tenancy import tenant_context
from tenancy.asgi import CLOSE_NOT_FOUND
from tenancy.backends import get_server
from tenancy.conf import tenancy_settings
from tenancy.connections import connection_for, unregister
from tenancy.exceptions import TenancyError, TenantRemoved
from tenancy.middleware import tenant_error_response
from tenancy.models import Domain, MoveKind, MoveStep, Tenant, TenantMove, TenantStatus
from tenancy.provisioning import ProvisioningError, create_tenant, deprovision_tenant
from tenancy.retention import (
    PurgeError,
    RetentionError,
    archive_tenant,
    purge_tenant,
    purge_tenants,
    reactivate_tenant,
    tenants_due,
)
from tenancy.tenant_locks import tenant_lock
from tests.helpers import recorded_move, write_behind_tenancy
from tests.settings import BACKEND
from tests.tenantapp.models import Note
from tests.test_admin import CHANGELIST, act, client_for, texts
from tests.test_asgi_scope import connect

NOTES = [f"note {number}" for number in range(5)]


def notes_of(tenant):
    with tenant_context(tenant):
        return sorted(Note.objects.values_list("text", flat=True))


def exists(tenant):
    return get_server(tenant.server).database_exists(tenant.database_name)


def served(client, host):
    return client.get("/notes/", HTTP_HOST=host, HTTP_ACCEPT="application/json")


def make(slug, **kwargs):
    tenant = create_tenant(slug, domains=[f"{slug}.example.test"], **kwargs)
    with tenant_context(tenant):
        for text in NOTES:
            Note.objects.create(text=f"{slug} {text}")
    return tenant


@pytest.fixture
def gamma(db_access):
    return make("gamma")


def archived_days_ago(tenant, days):
    """``tenant`` archived, its date ``days`` days in the past."""
    archive_tenant(tenant, 1)
    past = timezone.now() - timedelta(days=days)
    Tenant.objects.filter(pk=tenant.pk).update(retained_until=past)
    return past


# -- archiving ------------------------------------------------------------------------------


def test_an_archived_tenant_answers_404_and_keeps_its_rows(gamma, beta, client):
    before = notes_of(gamma)
    with tenant_context(beta):
        Note.objects.create(text="beta's own")
    assert served(client, "gamma.example.test").json() == {"notes": before}
    started = timezone.now()

    archived = archive_tenant(gamma, 30)

    row = Tenant.objects.get(slug="gamma")
    assert row.status == TenantStatus.ARCHIVED
    assert started + timedelta(days=30) <= row.retained_until <= timezone.now() + timedelta(30)
    assert row.status_detail.startswith("archived from active on ")
    assert archived.retained_until == row.retained_until
    # Not served, as for an unknown host: nothing of its rows in the answer.
    response = served(client, "gamma.example.test")
    assert response.status_code == 404
    assert response.json()["error"] == "tenant_not_found"
    assert "gamma note" not in response.content.decode()
    assert connect("gamma.example.test") == [{"type": "websocket.close", "code": CLOSE_NOT_FOUND}]
    # Its data and domains are kept; the other tenant is served as before.
    assert exists(row)
    assert notes_of(row) == before
    assert list(Domain.objects.filter(tenant=row).values_list("domain", flat=True)) == [
        "gamma.example.test"
    ]
    assert served(client, "beta.example.test").json() == {"notes": ["beta's own"]}


def assert_read_only(tenant):
    """No new connection writes to the tenant's database. SQLite: its file is read-only,
    which keeps out every user but root (who writes to any file)."""
    if BACKEND == "sqlite":
        mode = get_server(tenant.server).path(tenant.database_name).stat().st_mode
        assert not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
        if os.geteuid() == 0:
            return
    unregister(tenant)
    with tenant_context(tenant), pytest.raises(DatabaseError):
        Note.objects.create(text="late")
    unregister(tenant)
    with pytest.raises((sqlite3.OperationalError, psycopg.errors.ReadOnlySqlTransaction)):
        write_behind_tenancy(tenant.server, tenant.database_name, "written behind")


def test_an_archived_tenants_database_takes_no_writes(gamma):
    archive_tenant(gamma, 30)
    assert_read_only(gamma)
    assert notes_of(gamma) == sorted(f"gamma {text}" for text in NOTES)


def test_a_request_whose_tenant_was_archived_meanwhile_gets_404(gamma):
    request = RequestFactory().get("/notes/", HTTP_HOST="gamma.example.test")
    archive_tenant(gamma, 30)
    response = tenant_error_response(request, gamma, TenantRemoved("gamma"))
    assert response.status_code == 404


def test_suspended_and_failed_tenants_can_be_archived(gamma, db_access):
    Tenant.objects.filter(pk=gamma.pk).update(status=TenantStatus.SUSPENDED)
    assert archive_tenant("gamma", 3).status_detail.startswith("archived from suspended on")
    delta = make("delta")
    Tenant.objects.filter(pk=delta.pk).update(status=TenantStatus.FAILED)
    assert archive_tenant(delta, 3).status == TenantStatus.ARCHIVED


@pytest.mark.parametrize("days", [0, -1, True, 1.5, "7", 10**10])
def test_days_must_be_a_whole_number_from_1(gamma, days):
    with pytest.raises(RetentionError, match="Tenant 'gamma' is not archived"):
        archive_tenant(gamma, days)
    assert Tenant.objects.get(slug="gamma").status == TenantStatus.ACTIVE


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (TenantStatus.PROVISIONING, "only an active, suspended or failed tenant is archived"),
        (TenantStatus.DELETING, "delete_tenant gamma --retain 0` to finish it"),
        (TenantStatus.MOVING, "is being moved"),
        (TenantStatus.RESTORING, "is being restored from a backup"),
    ],
)
def test_a_tenant_in_the_middle_of_something_is_not_archived(gamma, status, message):
    Tenant.objects.filter(pk=gamma.pk).update(status=status)
    with pytest.raises(TenancyError, match=message):
        archive_tenant(gamma, 30)
    row = Tenant.objects.get(slug="gamma")
    assert (row.status, row.retained_until) == (status, None)


@pytest.mark.parametrize("kind", [MoveKind.MOVE, MoveKind.RESTORE])
def test_archiving_a_tenant_being_moved_or_restored_is_refused(gamma, kind, client):
    # A move (or restore) recorded while the tenant still has its status: between runs.
    TenantMove.objects.create(
        tenant=gamma,
        source_server="one",
        target_server="two",
        database_name=gamma.database_name,
        previous_status=TenantStatus.ACTIVE,
        step=MoveStep.PREPARED,
        kind=kind,
    )
    refused = "being moved" if kind == MoveKind.MOVE else "being restored"
    with pytest.raises(TenancyError, match=refused):
        archive_tenant(gamma, 30)
    assert Tenant.objects.get(slug="gamma").status == TenantStatus.ACTIVE
    assert served(client, "gamma.example.test").status_code == 200


def test_archiving_inside_a_transaction_is_refused(gamma):
    with transaction.atomic(), pytest.raises(TenancyError, match="inside a transaction"):
        archive_tenant(gamma, 30)
    assert Tenant.objects.get(slug="gamma").status == TenantStatus.ACTIVE


def test_archiving_while_another_run_holds_the_tenant_is_refused(gamma):
    with tenant_lock("gamma"), pytest.raises(TenancyError, match="by another run"):
        archive_tenant(gamma, 30)
    assert Tenant.objects.get(slug="gamma").status == TenantStatus.ACTIVE


def test_an_archived_tenant_is_not_archived_again(gamma):
    archive_tenant(gamma, 30)
    with pytest.raises(RetentionError, match="archived already, its data kept until"):
        archive_tenant(gamma, 60)


# -- the slug and domains stay taken ---------------------------------------------------------


def test_no_new_tenant_takes_the_slug_or_a_domain_of_an_archived_one(gamma):
    archive_tenant(gamma, 30)
    with pytest.raises(ProvisioningError) as refused:
        create_tenant("gamma")
    assert "reactivate_tenant gamma" in str(refused.value)
    assert "purge_tenants" in str(refused.value)
    with pytest.raises(ProvisioningError, match="reactivate_tenant gamma"):
        create_tenant("gamma", domains=["new.example.test"])
    with pytest.raises(ProvisioningError, match="already belongs to tenant gamma"):
        create_tenant("delta", domains=["gamma.example.test"])
    row = Tenant.objects.get(slug="gamma")
    assert row.status == TenantStatus.ARCHIVED
    assert notes_of(row) == sorted(f"gamma {text}" for text in NOTES)


# -- reactivating ---------------------------------------------------------------------------


def test_reactivating_serves_the_same_rows_and_takes_writes(gamma, client):
    before = notes_of(gamma)
    archive_tenant(gamma, 30)

    tenant = reactivate_tenant("gamma")

    row = Tenant.objects.get(slug="gamma")
    assert (row.status, row.retained_until, row.status_detail) == (TenantStatus.ACTIVE, None, "")
    assert tenant.status == TenantStatus.ACTIVE
    assert notes_of(row) == before
    assert served(client, "gamma.example.test").json() == {"notes": before}
    with tenant_context(row):
        Note.objects.create(text="after")
    assert "after" in notes_of(row)


def test_reactivating_migrates_a_tenant_archived_before_a_migration(gamma, migrations):
    archive_tenant(gamma, 30)
    migrations("tests.migrations_v2")
    out = io.StringIO()
    call_command("migrate_tenants", stdout=out, no_color=True)
    assert "gamma" not in out.getvalue()  # left out: archived
    with pytest.raises(CommandError, match=r"'gamma' is archived.*reactivate_tenant gamma"):
        call_command("migrate_tenants", "--tenant", "gamma", stdout=io.StringIO())

    reactivate_tenant(gamma)

    connection = connection_for(gamma)
    applied = MigrationRecorder(connection).applied_migrations()
    connection.close()
    assert ("tenantapp", "0002_note_text_index") in applied
    # The data migration ran inside it, next to its rows.
    assert notes_of(gamma) == sorted([*(f"gamma {text}" for text in NOTES), "welcome"])


def test_a_failing_migration_leaves_the_tenant_archived_and_read_only(db_access, migrations):
    tenant = make("beta-three")
    archive_tenant(tenant, 30)
    migrations("tests.migrations_failing")
    with pytest.raises(RetentionError, match="'beta-three' stays archived: migrating"):
        reactivate_tenant(tenant)
    row = Tenant.objects.get(slug="beta-three")
    assert row.status == TenantStatus.ARCHIVED
    assert row.retained_until is not None
    assert_read_only(row)
    migrations(None)
    assert reactivate_tenant(row).status == TenantStatus.ACTIVE


def test_only_an_archived_tenant_with_its_database_is_reactivated(gamma, db_access):
    with pytest.raises(RetentionError, match="'gamma' is active, not archived"):
        reactivate_tenant(gamma)
    archive_tenant(gamma, 30)
    unregister(gamma)
    get_server(gamma.server).drop_database(gamma.database_name)
    with pytest.raises(RetentionError, match=r"its database .* does not exist any more"):
        reactivate_tenant(gamma)
    assert Tenant.objects.get(slug="gamma").status == TenantStatus.ARCHIVED
    with pytest.raises(TenancyError, match="'nobody' does not exist"):
        reactivate_tenant("nobody")


# -- purging --------------------------------------------------------------------------------


def test_purge_drops_only_the_tenants_past_their_date(db_access):
    kept = make("gamma")
    archive_tenant(kept, 30)
    due = make("delta")
    archived_days_ago(due, 1)
    active = make("epsilon")
    # A date on a tenant that is not archived means nothing.
    Tenant.objects.filter(pk=active.pk).update(retained_until=timezone.now() - timedelta(1))

    assert purge_tenants(dry_run=True) == ["delta"]
    assert exists(due)
    assert purge_tenants() == ["delta"]

    assert not Tenant.objects.filter(slug="delta").exists()
    assert not Domain.objects.filter(domain="delta.example.test").exists()
    assert not exists(due)
    for tenant, status in ((kept, TenantStatus.ARCHIVED), (active, TenantStatus.ACTIVE)):
        assert Tenant.objects.get(pk=tenant.pk).status == status
        assert exists(tenant)
        assert notes_of(tenant) == sorted(f"{tenant.slug} {text}" for text in NOTES)
    assert purge_tenants() == []
    # The 30 days over, gamma goes too.
    assert purge_tenants(timezone.now() + timedelta(days=31), dry_run=True) == ["gamma"]


def test_a_purged_slug_can_be_used_again(gamma):
    archived_days_ago(gamma, 2)
    purge_tenants()
    tenant = create_tenant("gamma", domains=["gamma.example.test"])
    assert notes_of(tenant) == []


def test_one_tenant_failing_does_not_stop_the_purge(db_access):
    stuck, due = make("delta"), make("gamma")
    for tenant in (stuck, due):
        archived_days_ago(tenant, 1)
    recorded_move(stuck)
    with pytest.raises(PurgeError) as failed:
        purge_tenants()
    assert failed.value.purged == ["gamma"]
    assert list(failed.value.failures) == ["delta"]
    assert "being moved" in str(failed.value)
    assert not Tenant.objects.filter(slug="gamma").exists()
    assert Tenant.objects.get(slug="delta").status == TenantStatus.ARCHIVED
    assert exists(stuck)


def test_a_tenant_reactivated_after_it_was_listed_is_not_purged(gamma):
    archived_days_ago(gamma, 1)
    [listed] = tenants_due()
    reactivate_tenant(gamma)
    with pytest.raises(RetentionError, match="'gamma' is not purged: it is active"):
        purge_tenant(listed)
    assert exists(gamma)


def test_deleting_an_archived_tenant_now_drops_its_read_only_database(gamma):
    archive_tenant(gamma, 30)
    deprovision_tenant(gamma)
    assert not Tenant.objects.filter(slug="gamma").exists()
    assert not exists(gamma)


# -- the commands ---------------------------------------------------------------------------


def run(*args, answer=None, monkeypatch=None):
    """The command's output and errors; ``answer``: what is typed at its question."""
    out, err = io.StringIO(), io.StringIO()
    if answer is not None:
        monkeypatch.setattr("builtins.input", lambda prompt: answer)
    call_command(*args, stdout=out, stderr=err, no_color=True)
    return out.getvalue(), err.getvalue()


def test_delete_tenant_retain_archives_and_says_until_when(gamma, monkeypatch):
    prompts = []
    monkeypatch.setattr("builtins.input", lambda prompt: prompts.append(prompt) or "gamma")
    out, _ = run("delete_tenant", "gamma", "--retain", "30")
    [prompt] = prompts
    assert prompt.startswith("Archive tenant gamma, keeping its data (database ")
    assert " until " in prompt
    row = Tenant.objects.get(slug="gamma")
    assert row.status == TenantStatus.ARCHIVED
    assert "Archived tenant gamma" in out
    # In the current time zone, as the message gives it.
    assert f"until {timezone.localtime(row.retained_until).strftime('%Y-%m-%d')}" in out
    assert exists(row)


def test_delete_tenant_uses_retention_days_and_retain_0_drops_now(gamma, settings):
    settings.TENANCY = {**settings.TENANCY, "RETENTION_DAYS": 7}
    run("delete_tenant", "gamma", "--noinput")
    row = Tenant.objects.get(slug="gamma")
    assert row.status == TenantStatus.ARCHIVED
    assert row.retained_until > timezone.now() + timedelta(days=6)
    out, _ = run("delete_tenant", "gamma", "--retain", "0", "--noinput")
    assert "Deleted tenant gamma, dropping database" in out
    assert not Tenant.objects.filter(slug="gamma").exists()
    assert not exists(row)


def test_delete_tenant_without_retention_deletes_at_once(gamma):
    assert tenancy_settings.RETENTION_DAYS == 0
    run("delete_tenant", "gamma", "--noinput")
    assert not Tenant.objects.filter(slug="gamma").exists()
    assert not exists(gamma)


def test_delete_tenant_keep_database_ignores_retention_but_not_with_retain(gamma, settings):
    with pytest.raises(CommandError, match="not allowed with argument"):
        run("delete_tenant", "gamma", "--retain", "5", "--keep-database", "--noinput")
    with pytest.raises(CommandError, match="--retain takes a number of days, 0 or more"):
        run("delete_tenant", "gamma", "--retain", "-1", "--noinput")
    assert Tenant.objects.get(slug="gamma").status == TenantStatus.ACTIVE
    settings.TENANCY = {**settings.TENANCY, "RETENTION_DAYS": 7}
    run("delete_tenant", "gamma", "--keep-database", "--noinput")
    assert not Tenant.objects.filter(slug="gamma").exists()
    assert exists(gamma)
    unregister(gamma)
    get_server(gamma.server).drop_database(gamma.database_name)


def test_delete_tenant_refuses_an_archived_one_in_one_line(gamma, settings):
    settings.TENANCY = {**settings.TENANCY, "RETENTION_DAYS": 7}
    run("delete_tenant", "gamma", "--noinput")
    with pytest.raises(CommandError) as refused:
        run("delete_tenant", "gamma", "--noinput")
    assert "archived already" in str(refused.value)
    assert "delete_tenant gamma --retain 0" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_purge_tenants_command_lists_asks_and_drops(db_access, monkeypatch):
    kept, due = make("gamma"), make("delta")
    archive_tenant(kept, 30)
    archived_days_ago(due, 1)

    out, _ = run("purge_tenants", "--dry-run")
    assert "delta: database" in out
    assert "gamma" not in out
    assert "1 tenant(s) would be removed (dry run)." in out
    with pytest.raises(CommandError, match="Cancelled; nothing was removed"):
        run("purge_tenants", answer="no", monkeypatch=monkeypatch)
    assert exists(due)

    out, _ = run("purge_tenants", "--noinput")
    assert f"Tenant delta: removed, database {due.database_name} on server one dropped." in out
    assert not exists(due)
    assert exists(kept)
    out, _ = run("purge_tenants", "--noinput")
    assert out.strip() == "No archived tenant is due for removal."


def test_purge_tenants_command_reports_a_failure_and_goes_on(db_access):
    stuck, due = make("delta"), make("gamma")
    for tenant in (stuck, due):
        archived_days_ago(tenant, 1)
    recorded_move(stuck)
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError, match="1 of 2 tenant\\(s\\) were not removed: delta"):
        call_command("purge_tenants", "--noinput", stdout=out, stderr=err, no_color=True)
    assert "Tenant delta: not removed: Tenant 'delta' is being moved" in err.getvalue()
    assert "Tenant gamma: removed" in out.getvalue()


def test_reactivate_tenant_command(gamma):
    archive_tenant(gamma, 30)
    out, _ = run("reactivate_tenant", "gamma")
    assert out.startswith("Tenant gamma is active again")
    assert Tenant.objects.get(slug="gamma").status == TenantStatus.ACTIVE
    with pytest.raises(CommandError, match="'gamma' is active, not archived"):
        run("reactivate_tenant", "gamma")
    with pytest.raises(CommandError, match="not a valid tenant slug"):
        run("reactivate_tenant", "Not A Slug")


# -- the setting ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [-1, "7", True, 1.5, None])
def test_retention_days_must_be_a_whole_number(settings, value):
    settings.TENANCY = {**settings.TENANCY, "RETENTION_DAYS": value}
    with pytest.raises(ImproperlyConfigured, match=r"TENANCY\['RETENTION_DAYS'\] must be"):
        tenancy_settings.RETENTION_DAYS  # noqa: B018


# -- the admin ------------------------------------------------------------------------------


@pytest.fixture
def admin_client(db_access):
    client = client_for(superuser=True)
    yield client
    User.objects.all().delete()


def test_admin_delete_page_offers_retention_and_archives(admin_client, gamma, settings):
    settings.TENANCY = {**settings.TENANCY, "RETENTION_DAYS": 14}
    page = act(admin_client, "delete_selected_tenants", gamma).content.decode()
    assert 'name="retain_days"' in page
    assert 'value="14"' in page
    both = act(
        admin_client,
        "delete_selected_tenants",
        gamma,
        confirm="yes",
        retain_days="30",
        keep_database="on",
        **{f"slug_{gamma.pk}": "gamma"},
    )
    assert "keep the databases only with 0 days" in both.content.decode()
    assert Tenant.objects.get(slug="gamma").status == TenantStatus.ACTIVE

    done = act(
        admin_client,
        "delete_selected_tenants",
        gamma,
        confirm="yes",
        retain_days="30",
        **{f"slug_{gamma.pk}": "gamma"},
    )
    [message] = texts(done)
    assert message.startswith("Tenant gamma: archived, its data kept until ")
    row = Tenant.objects.get(slug="gamma")
    assert row.status == TenantStatus.ARCHIVED
    assert exists(row)
    listing = admin_client.get(CHANGELIST, {"status__exact": "archived"}).content.decode()
    assert "gamma.example.test" in listing
    assert "archived</strong> until " in listing


def test_admin_reactivates_archived_tenants(admin_client, gamma, db_access):
    archive_tenant(gamma, 30)
    delta = make("delta")
    done = act(admin_client, "reactivate_selected", delta, gamma)
    assert texts(done) == [
        "Tenant 'delta' is active, not archived; only an archived tenant is reactivated.",
        "Tenant gamma: active again.",
    ]
    assert Tenant.objects.get(slug="gamma").status == TenantStatus.ACTIVE
    assert notes_of(gamma) == sorted(f"gamma {text}" for text in NOTES)


def test_admin_delete_with_0_days_drops_at_once(admin_client, gamma):
    done = act(
        admin_client,
        "delete_selected_tenants",
        gamma,
        confirm="yes",
        retain_days="0",
        **{f"slug_{gamma.pk}": "gamma"},
    )
    assert texts(done) == ["Tenant gamma: deleted."]
    assert not exists(gamma)


def test_admin_reactivation_needs_the_provision_permission(db_access, gamma):
    viewer = client_for("view_tenant", "change_tenant")
    assert "reactivate_selected" not in viewer.get(CHANGELIST).content.decode()
    operator = client_for("view_tenant", "change_tenant", "provision_tenant")
    assert "reactivate_selected" in operator.get(CHANGELIST).content.decode()
    User.objects.all().delete()
