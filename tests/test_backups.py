"""backup_tenant and restore_tenant: one file per tenant with a manifest, written whole or
not at all; restored into a new database, checked against the manifest, migrated forward,
then given to the tenant; a failure leaves every tenant and database as it was."""

import builtins
import contextlib
import hashlib
import io
import json
import socket
import sqlite3
import subprocess
import tarfile
import threading
from pathlib import Path

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, OperationalError, connections, transaction
from django.db.backends.signals import connection_created
from psycopg import sql

from tenancy import backups as backups_module
from tenancy import ledger, tenant_context
from tenancy.backends import get_server
from tenancy.backends import postgresql as postgresql_backend
from tenancy.backends.base import held_connections, held_wrappers
from tenancy.backends.postgresql import MAINTENANCE_ALIAS, PostgreSQLServer
from tenancy.backups import (
    BackupError,
    abort_restore,
    backup_tenant,
    read_manifest,
    restore_tenant,
)
from tenancy.models import Domain, MoveKind, MoveStep, Tenant, TenantMove, TenantStatus
from tenancy.provisioning import create_tenant, deprovision_tenant
from tenancy.tenant_locks import tenant_lock
from tests.helpers import recorded_move
from tests.settings import BACKEND
from tests.tenantapp.models import Note, Tag


def texts(tenant):
    with tenant_context(tenant):
        return sorted(Note.objects.values_list("text", flat=True))


def databases(server="one"):
    return set(get_server(server).list_databases())


def read_members(path):
    """The members of the backup at ``path``: name -> bytes, in their order."""
    with tarfile.open(path) as archive:
        return {member.name: archive.extractfile(member).read() for member in archive}


def write_members(path, members):
    """The backup at ``path`` written anew with ``members`` (``read_members``')."""
    path.unlink()
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def rewrite_manifest(path, change, *, sign=True):
    """The backup at ``path`` with its manifest changed by ``change`` (the dump as it was),
    signed again with the project's key (``sign``) as a backup of this project would be."""
    members = read_members(path)
    manifest = json.loads(members["manifest.json"])
    change(manifest)
    members["manifest.json"] = json.dumps(manifest).encode()
    if sign:
        members["manifest.sig"] = backups_module._sign(members["manifest.json"])
    write_members(path, members)


def replace_dump(path, data):
    """The backup at ``path`` holding the dump ``data`` instead, its manifest saying so,
    unsigned: a backup from elsewhere, restored only when trusted."""
    members = read_members(path)
    members[next(name for name in members if name.startswith("database."))] = data
    write_members(path, members)
    rewrite_manifest(
        path,
        lambda manifest: manifest.update(
            dump_bytes=len(data), dump_sha256=hashlib.sha256(data).hexdigest()
        ),
        sign=False,
    )


def damaged_copy(path, target):
    """The backup at ``path`` written to ``target`` with a byte inside its dump changed."""
    data = bytearray(Path(path).read_bytes())
    data[512 + 4000] ^= 0xFF
    target.write_bytes(bytes(data))
    return target


def leftover_restore(tenant):
    """What a restore in place of TENANT's database leaves when it is killed after making
    the new database, before the switch."""
    get_server("one").create_database("test_tenancy_gamma_leftover")
    recorded_move(
        tenant,
        MoveStep.COPYING,
        kind=MoveKind.RESTORE,
        target_server="one",
        target_database="test_tenancy_gamma_leftover",
    )


@pytest.fixture
def backup(gamma, tmp_path):
    return backup_tenant(gamma, tmp_path)


def test_a_backup_is_one_tar_file_with_the_dump_and_a_manifest(backup, gamma, tmp_path):
    path = tmp_path / backup.path.rsplit("/", 1)[1]
    assert path.name.startswith("gamma-")
    assert path.name.endswith(".tar")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no partial file left
    assert path.stat().st_mode & 0o077 == 0  # customer data: the owner's only
    with tarfile.open(path) as archive:
        names = archive.getnames()
        dump = archive.extractfile(names[0]).read()
    assert names == [
        "database.dump" if BACKEND == "postgresql" else "database.sqlite3",
        "manifest.json",
        "manifest.sig",
    ]
    # The server's own format, which its tools read.
    assert dump.startswith(b"PGDMP" if BACKEND == "postgresql" else b"SQLite format 3\0")
    manifest = read_manifest(path)
    assert (manifest.slug, manifest.server, manifest.status) == ("gamma", "one", "active")
    assert manifest.domains == [("gamma.example.test", True)]
    assert "tenantapp.0002_label_attachment" in manifest.migrations
    note_table = next(name for name in manifest.tables if name.endswith("tenantapp_note"))
    assert manifest.tables[note_table] == 25
    assert sum(manifest.tables.values()) == backup.rows
    assert manifest.dump_bytes == len(dump)
    assert manifest.django_version
    assert manifest.server_version


def test_round_trip_restores_the_rows_of_backup_time_in_place(gamma, backup, beta, client):
    with tenant_context(beta):
        Note.objects.create(text="beta's own")
    with tenant_context(gamma):
        Note.objects.filter(text__in=["note 00", "note 01"]).delete()
        Note.objects.create(text="written after the backup")
    before_restore = Tenant.objects.get(slug="gamma")

    report = restore_tenant(backup.path, replace=True)

    tenant = Tenant.objects.get(slug="gamma")
    assert tenant.status == TenantStatus.ACTIVE
    assert tenant.database_name == report.database_name != before_restore.database_name
    assert texts(tenant) == [f"note {n:02}" for n in range(25)]
    with tenant_context(tenant):
        assert Tag.objects.get().note.text == "note 00"
        # The sequences came along: a new row gets a new key.
        assert Note.objects.create(text="new").pk > 25
    # The replaced database is gone, and no record is left.
    assert not get_server("one").database_exists(before_restore.database_name)
    assert not TenantMove.objects.exists()
    # Requests read the restored database; the other tenant is untouched.
    response = client.get("/notes/", HTTP_HOST="gamma.example.test")
    assert "note 00" in response.content.decode()
    assert "written after the backup" not in response.content.decode()
    assert texts(beta) == ["beta's own"]


def test_keep_replaced_keeps_the_old_database_read_only(gamma, backup):
    old_name = gamma.database_name
    report = restore_tenant(backup.path, replace=True, keep_replaced=True)
    assert report.source_kept
    assert get_server("one").database_exists(old_name)
    # Kept, but nobody's: a new tenant is not given it.
    assert not Tenant.objects.filter(database_name=old_name).exists()


def test_a_live_tenant_is_never_replaced_without_replace(gamma, backup):
    with tenant_context(gamma):
        Note.objects.create(text="newer")
    before = databases()
    with pytest.raises(BackupError, match="--replace"):
        restore_tenant(backup.path)
    assert databases() == before
    assert "newer" in texts(Tenant.objects.get(slug="gamma"))


def test_a_deleted_tenant_comes_back_with_its_domains(gamma, backup, client):
    deprovision_tenant(gamma)
    assert not Tenant.objects.filter(slug="gamma").exists()

    report = restore_tenant(backup.path)

    tenant = Tenant.objects.get(slug="gamma")
    assert tenant.status == TenantStatus.ACTIVE
    assert report.domains == ["gamma.example.test"]
    assert Domain.objects.get(domain="gamma.example.test").tenant == tenant
    assert texts(tenant) == [f"note {n:02}" for n in range(25)]
    response = client.get("/notes/", HTTP_HOST="gamma.example.test")
    assert "note 19" in response.content.decode()


def test_a_domain_taken_meanwhile_stays_with_its_new_owner(gamma, backup, beta):
    deprovision_tenant(gamma)
    Domain.objects.create(domain="gamma.example.test", tenant=beta)
    report = restore_tenant(backup.path)
    assert report.domains_skipped == ["gamma.example.test"]
    assert Domain.objects.get(domain="gamma.example.test").tenant == beta


def test_a_side_copy_is_a_tenant_of_its_own_without_domains(gamma, backup):
    report = restore_tenant(backup.path, as_slug="gamma-copy", server="two")
    copy = Tenant.objects.get(slug="gamma-copy")
    # Not served and sent no jobs: it is for looking at.
    assert (copy.server, copy.status) == ("two", TenantStatus.SUSPENDED)
    assert not Domain.objects.filter(tenant=copy).exists()
    assert report.domains == []
    assert texts(copy) == texts(gamma)
    with tenant_context(copy):
        Note.objects.all().delete()
    # Two databases: emptying the copy leaves the original whole.
    assert len(texts(gamma)) == 25


def test_a_damaged_backup_is_refused_and_leaves_nothing(gamma, backup, tmp_path):
    path = damaged_copy(backup.path, tmp_path / "damaged.tar")
    with tenant_context(gamma):
        Note.objects.create(text="kept")
    before = databases()
    with pytest.raises(BackupError) as error:
        restore_tenant(path, replace=True)
    assert "gamma" in str(error.value)
    assert databases() == before
    assert not TenantMove.objects.exists()
    tenant = Tenant.objects.get(slug="gamma")
    assert tenant.database_name == gamma.database_name
    assert "kept" in texts(tenant)
    # A new tenant from it is not left half made either.
    with pytest.raises(BackupError):
        restore_tenant(path, as_slug="damaged")
    assert not Tenant.objects.filter(slug="damaged").exists()
    assert databases() == before


def test_a_dump_other_than_the_manifests_is_never_handed_to_the_server(
    gamma, backup, tmp_path, monkeypatch
):
    # Another dump of gamma with as many rows (one note's text changed) in place of the
    # backup's, its size in the signed manifest: only the digest tells them apart. It is
    # read while the database is made, and pg_restore never starts on a dump that fails it.
    with tenant_context(gamma):
        Note.objects.filter(text="note 00").update(text="note XX")
    other = backup_tenant(gamma, tmp_path / "other.tar")
    with tarfile.open(other.path) as archive:
        dump = archive.extractfile(archive.getnames()[0]).read()
    path = tmp_path / "swapped.tar"
    with tarfile.open(backup.path) as archive, tarfile.open(path, "w") as swapped:
        for member in archive:
            data = dump if member.name.startswith("database.") else archive.extractfile(member)
            member.size = len(dump) if member.name.startswith("database.") else member.size
            swapped.addfile(member, io.BytesIO(data) if isinstance(data, bytes) else data)
    rewrite_manifest(path, lambda manifest: manifest.update(dump_bytes=len(dump)))
    programs = []
    popen = subprocess.Popen

    def started(args, *rest, **options):
        programs.append(Path(args[0]).name)
        return popen(args, *rest, **options)

    monkeypatch.setattr(subprocess, "Popen", started)
    before = databases()
    with pytest.raises(BackupError, match="damaged"):
        restore_tenant(path, as_slug="swapped")
    assert "pg_restore" not in programs
    assert not Tenant.objects.filter(slug="swapped").exists()
    assert databases() == before


def test_a_damaged_file_leaves_an_interrupted_restore_as_it_was(gamma, backup, tmp_path):
    path = damaged_copy(backup.path, tmp_path / "damaged.tar")
    leftover_restore(gamma)
    with pytest.raises(BackupError, match="damaged"):
        restore_tenant(path, replace=True)
    assert get_server("one").database_exists("test_tenancy_gamma_leftover")
    assert TenantMove.objects.filter(tenant_id=gamma.pk).exists()
    # Nor is a killed restore of a new tenant made again from it.
    abort_restore("gamma")
    deprovision_tenant(Tenant.objects.get(slug="gamma"))
    tenant = Tenant.objects.create(slug="gamma", server="one", status=TenantStatus.RESTORING)
    get_server("one").create_database(tenant.database_name)
    with pytest.raises(BackupError, match="damaged"):
        restore_tenant(path)
    assert Tenant.objects.get(slug="gamma").status == TenantStatus.RESTORING
    assert get_server("one").database_exists(tenant.database_name)


def test_rows_that_differ_from_the_manifest_are_refused(gamma, backup):
    def one_more_note(manifest):
        name = next(name for name in manifest["tables"] if name.endswith("tenantapp_note"))
        manifest["tables"][name] += 1

    rewrite_manifest(Path(backup.path), one_more_note)
    before = databases()
    with pytest.raises(BackupError, match="differs from the backup's manifest"):
        restore_tenant(backup.path, as_slug="gamma-copy")
    assert databases() == before
    assert not Tenant.objects.filter(slug="gamma-copy").exists()


def test_a_backup_from_newer_code_is_refused(gamma, backup):
    rewrite_manifest(
        Path(backup.path), lambda manifest: manifest["migrations"].append("tenantapp.9999_future")
    )
    with pytest.raises(BackupError, match=r"tenantapp\.9999_future"):
        restore_tenant(backup.path, as_slug="gamma-copy")
    assert not Tenant.objects.filter(slug="gamma-copy").exists()


def test_an_older_backup_is_migrated_forward(gamma, backup, migrations):
    migrations("tests.migrations_v3")
    report = restore_tenant(backup.path, as_slug="gamma-copy")
    assert report.migrations_applied == 1
    assert "welcome" in texts(Tenant.objects.get(slug="gamma-copy"))


def test_a_file_that_is_not_a_backup_is_refused(db_access, tmp_path):
    path = tmp_path / "notes.tar"
    path.write_bytes(b"not a tar file" * 100)
    with pytest.raises(BackupError, match="not a tenant backup"):
        restore_tenant(path)
    with pytest.raises(BackupError, match="There is no backup"):
        restore_tenant(tmp_path / "missing.tar")


def test_an_existing_file_is_never_replaced(gamma, tmp_path):
    path = tmp_path / "gamma.tar"
    path.write_bytes(b"an older backup")
    with pytest.raises(BackupError, match="exists already"):
        backup_tenant(gamma, path)
    assert path.read_bytes() == b"an older backup"
    assert [p.name for p in tmp_path.iterdir()] == ["gamma.tar"]


def test_a_tenant_without_a_complete_database_is_not_backed_up(gamma, tmp_path):
    Tenant.objects.filter(pk=gamma.pk).update(status=TenantStatus.PROVISIONING)
    with pytest.raises(BackupError, match="provisioning"):
        backup_tenant("gamma", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_replacement_is_redone_by_running_it_again(gamma, backup):
    # What a crash after the restored database was made, before the switch, leaves.
    server = get_server("one")
    leftover_restore(gamma)
    with pytest.raises(CommandError, match="being restored"):
        call_command("move_tenant", "gamma", "--server", "two")
    report = restore_tenant(backup.path, replace=True)
    assert report.resumed
    assert not server.database_exists("test_tenancy_gamma_leftover")
    assert not TenantMove.objects.exists()
    assert len(texts(Tenant.objects.get(slug="gamma"))) == 25


def test_abort_restore_drops_what_the_restore_made(gamma):
    server = get_server("one")
    leftover_restore(gamma)
    abort_restore("gamma")
    assert not server.database_exists("test_tenancy_gamma_leftover")
    assert server.database_exists(gamma.database_name)
    assert len(texts(Tenant.objects.get(slug="gamma"))) == 25
    with pytest.raises(BackupError, match="not being restored"):
        abort_restore("gamma")


# -- the commands --------------------------------------------------------------------------


def test_commands_back_up_every_tenant_and_restore_one(gamma, tmp_path, capsys):
    delta = create_tenant("delta")
    with tenant_context(delta):
        Note.objects.create(text="delta's own")
    call_command("backup_tenant", "--all-tenants", "--jobs", "2", "-o", str(tmp_path))
    out = capsys.readouterr().out
    assert "Tenant delta:" in out
    assert "Tenant gamma:" in out
    files = sorted(p.name for p in tmp_path.iterdir())
    assert [name.split("-")[0] for name in files] == ["delta", "gamma"]

    with tenant_context(delta):
        Note.objects.all().delete()
    call_command("restore_tenant", str(tmp_path / files[0]), "--replace", "--noinput", "--json")
    report = json.loads(capsys.readouterr().out)
    assert report["slug"] == "delta"
    assert report["rows"] >= 1
    assert texts(Tenant.objects.get(slug="delta")) == ["delta's own"]
    assert len(texts(gamma)) == 25  # the other tenant is untouched


def test_command_errors_are_one_line(gamma, backup, tmp_path, monkeypatch):
    with pytest.raises(CommandError, match="--replace"):
        call_command("restore_tenant", backup.path, "--noinput")
    with pytest.raises(CommandError, match="There is no tenant 'nobody'"):
        call_command("backup_tenant", "nobody", "-o", str(tmp_path))
    monkeypatch.setattr(builtins, "input", lambda prompt: "no")
    with pytest.raises(CommandError, match="Cancelled"):
        call_command("restore_tenant", backup.path, "--replace")
    assert Tenant.objects.get(slug="gamma").database_name == gamma.database_name


@pytest.mark.skipif(BACKEND != "postgresql", reason="a pooler is PostgreSQL's")
def test_a_server_behind_a_transaction_pooler_needs_a_direct_route(gamma, settings, tmp_path):
    servers = dict(settings.TENANCY["SERVERS"])
    pooled = {k: v for k, v in servers["one"].items() if k != "DIRECT"}
    settings.TENANCY = {
        **settings.TENANCY,
        "SERVERS": {**servers, "one": {**pooled, "TRANSACTION_POOLING": True}},
    }
    with pytest.raises(BackupError, match="DIRECT"):
        backup_tenant(gamma, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("direct", "message"),
    [
        ({"NAME": "x"}, "must be a dict of HOST, PORT and OPTIONS"),
        ({"OPTIONS": {"dbname": "x"}}, "DIRECT OPTIONS 'dbname'"),
        ({"OPTIONS": {" dbname": "x"}}, "DIRECT OPTIONS key that is not a plain"),
    ],
)
def test_direct_settings_are_validated(direct, message):
    from django.core.exceptions import ImproperlyConfigured

    from tenancy.conf import _validated_server

    server = {"ENGINE": "django.db.backends.postgresql", "HOST": "pooler", "DIRECT": direct}
    with pytest.raises(ImproperlyConfigured, match=message):
        _validated_server("one", server)


def test_an_archived_tenant_is_not_replaced_until_reactivated(gamma, backup):
    from tenancy.retention import archive_tenant

    archive_tenant(gamma, days=30)
    before = databases()
    with pytest.raises(BackupError, match="reactivate_tenant gamma"):
        restore_tenant(backup.path, replace=True)
    assert databases() == before
    assert Tenant.objects.get(slug="gamma").status == TenantStatus.ARCHIVED


def test_an_archived_tenant_is_backed_up_from_its_read_only_database(gamma, tmp_path):
    from tenancy.retention import archive_tenant

    archive_tenant(gamma, days=30)
    report = backup_tenant("gamma", tmp_path)
    assert read_manifest(report.path).status == TenantStatus.ARCHIVED
    restore_tenant(report.path, as_slug="gamma-copy")
    assert len(texts(Tenant.objects.get(slug="gamma-copy"))) == 25


# -- retention as a backup (RETENTION_BACKUP_DIRECTORY) ------------------------------------


@pytest.fixture
def backup_retention(settings, tmp_path):
    settings.TENANCY = {**settings.TENANCY, "RETENTION_BACKUP_DIRECTORY": str(tmp_path)}
    return tmp_path


def test_an_archived_tenant_is_kept_as_a_backup_and_restored_on_reactivation(
    gamma, beta, backup_retention, client
):
    from tenancy.retention import archive_tenant, reactivate_tenant

    with tenant_context(beta):
        Note.objects.create(text="beta's own")
    archived = archive_tenant(gamma, days=30)
    backup_file = Path(archived.retained_backup)
    assert backup_file.parent == backup_retention
    assert read_manifest(backup_file).slug == "gamma"
    # The server's space is freed; the tenant is not served.
    assert not get_server("one").database_exists(gamma.database_name)
    assert client.get("/notes/", HTTP_HOST="gamma.example.test").status_code == 404

    reactivate_tenant("gamma")
    tenant = Tenant.objects.get(slug="gamma")
    assert (tenant.status, tenant.retained_backup) == (TenantStatus.ACTIVE, "")
    assert texts(tenant) == [f"note {n:02}" for n in range(25)]
    assert not backup_file.exists()
    assert texts(beta) == ["beta's own"]
    response = client.get("/notes/", HTTP_HOST="gamma.example.test")
    assert "note 05" in response.content.decode()


def test_purging_an_archived_tenant_removes_its_backup(gamma, backup_retention):
    from datetime import timedelta

    from django.utils import timezone

    from tenancy.retention import archive_tenant, purge_tenants

    backup_file = Path(archive_tenant(gamma, days=1).retained_backup)
    assert purge_tenants(timezone.now() + timedelta(days=2)) == ["gamma"]
    assert not backup_file.exists()
    assert not Tenant.objects.filter(slug="gamma").exists()


def test_an_archive_whose_backup_fails_leaves_the_tenant_as_it_was(gamma, settings, tmp_path):
    from tenancy.retention import RetentionError, archive_tenant

    taken = tmp_path / "not-a-directory"
    taken.write_text("a file")
    settings.TENANCY = {**settings.TENANCY, "RETENTION_BACKUP_DIRECTORY": str(taken)}
    with pytest.raises(RetentionError, match="active as before"):
        archive_tenant(gamma, days=30)
    tenant = Tenant.objects.get(slug="gamma")
    assert (tenant.status, tenant.retained_until) == (TenantStatus.ACTIVE, None)
    assert len(texts(tenant)) == 25


# -- untrusted files -------------------------------------------------------------------


def test_a_backup_not_signed_by_this_project_is_restored_only_when_trusted(gamma, backup):
    rewrite_manifest(Path(backup.path), lambda manifest: None, sign=False)
    before = databases()
    with pytest.raises(BackupError, match="not signed with this project's SECRET_KEY"):
        restore_tenant(backup.path, as_slug="gamma-copy")
    assert databases() == before
    assert not Tenant.objects.filter(slug="gamma-copy").exists()
    restore_tenant(backup.path, as_slug="gamma-copy", trust=True)
    assert len(texts(Tenant.objects.get(slug="gamma-copy"))) == 25


def test_a_backup_written_to_while_it_is_restored_is_undone(gamma, backup, tmp_path, monkeypatch):
    """The file is opened once, and its digest read before the dump runs; a write into
    it afterwards (the same file, in place) is found before the restored database is
    given to anyone, and the restore undone."""
    with tenant_context(gamma):
        Note.objects.filter(text="note 00").update(text="note XX")
    other = backup_tenant(gamma, tmp_path / "other")
    with tarfile.open(other.path) as archive:
        replacement = archive.extractfile(archive.getnames()[0]).read()
    path, checked = Path(backup.path), backups_module._Backup.check_digest

    def check_then_write(self):
        checked(self)  # the genuine, signed dump
        with path.open("r+b") as file:
            file.seek(self.member.offset_data)
            file.write(replacement[: self.member.size])

    monkeypatch.setattr(backups_module._Backup, "check_digest", check_then_write)
    before = databases()
    with pytest.raises(BackupError, match="was written to while it was being restored"):
        restore_tenant(path, as_slug="gamma-copy")
    assert databases() == before
    assert not Tenant.objects.filter(slug="gamma-copy").exists()


@pytest.mark.skipif(BACKEND != "postgresql", reason="pg_dump's")
def test_a_trusted_dump_written_by_pg_dump_to_a_file_is_restored(gamma, backup, tmp_path):
    """A dump written by ``pg_dump --file`` names the positions of its blocks from its own
    start; inside a backup file it is read from a copy of its own."""
    from tenancy.backends.client_programs import client_program

    dump = tmp_path / "file.dump"
    with get_server("one").client_connection(gamma.database_name) as (dsn, environment):
        subprocess.run(
            [client_program("pg_dump"), "--format=custom", "--file", str(dump), dsn],
            env=environment,
            check=True,
        )
    path = Path(backup.path)
    replace_dump(path, dump.read_bytes())
    restore_tenant(path, as_slug="gamma-copy", trust=True)
    assert texts(Tenant.objects.get(slug="gamma-copy")) == texts(gamma)


def test_a_manifest_changed_after_signing_is_not_trusted(gamma, backup, settings):
    rewrite_manifest(
        Path(backup.path), lambda manifest: manifest.update(name="Changed"), sign=False
    )
    with pytest.raises(BackupError, match="not signed"):
        restore_tenant(backup.path, as_slug="gamma-copy")
    # Signed under a key that was rotated away: still this project's.
    rewrite_manifest(Path(backup.path), lambda manifest: None)
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "a new key " * 5
    restore_tenant(backup.path, as_slug="gamma-copy")
    assert Tenant.objects.get(slug="gamma-copy").name == "Changed (copy of gamma)"


def test_replace_never_puts_another_tenants_backup_into_a_tenant(gamma, backup):
    delta = create_tenant("delta")
    with tenant_context(delta):
        Note.objects.create(text="delta's own")
    with pytest.raises(BackupError, match="never another's"):
        restore_tenant(backup.path, as_slug="delta", replace=True)
    # A manifest changed to name delta is not this project's any more.
    rewrite_manifest(Path(backup.path), lambda manifest: manifest.update(slug="delta"), sign=False)
    with pytest.raises(BackupError, match="not signed"):
        restore_tenant(backup.path, replace=True)
    assert texts(Tenant.objects.get(slug="delta")) == ["delta's own"]


@pytest.mark.parametrize(
    "change",
    [
        {"domains": 5},
        {"domains": [["gamma.example.test"]]},
        {"tables": ["tenantapp_note"]},
        {"tables": {"tenantapp_note": "25"}},
        {"sequences": []},
        {"migrations": [5]},
        {"slug": "Not A Slug"},
        {"server": ["one"]},
        {"dump_member": "../../etc/passwd"},
        {"dump_bytes": -1},
        {"name": "x" * 1000},
    ],
)
def test_a_manifest_of_the_wrong_shape_is_one_clean_error(gamma, backup, change):
    rewrite_manifest(Path(backup.path), lambda manifest: manifest.update(change))
    before = databases()
    with pytest.raises(BackupError, match=r"not a whole tenant backup|did not write"):
        restore_tenant(backup.path, as_slug="gamma-copy")
    assert databases() == before


def test_a_dump_member_that_is_not_the_manifests_is_refused(gamma, backup):
    rewrite_manifest(
        Path(backup.path), lambda manifest: manifest.update(dump_bytes=manifest["dump_bytes"] + 1)
    )
    with pytest.raises(BackupError, match="damaged"):
        read_manifest(backup.path)


def test_a_domain_of_another_tenant_in_other_case_is_skipped(gamma, backup, beta):
    deprovision_tenant(gamma)
    Domain.objects.create(domain="gamma.example.test", tenant=beta)
    rewrite_manifest(
        Path(backup.path),
        lambda manifest: manifest.update(
            domains=[["GAMMA.example.test", True], ["admin.example.test", False]]
        ),
    )
    report = restore_tenant(backup.path)
    # Taken by beta (whatever the case), and a host of the main site: neither restored.
    assert sorted(report.domains_skipped) == ["admin.example.test", "gamma.example.test"]
    assert Domain.objects.get(domain="gamma.example.test").tenant == beta


def test_a_failed_restore_never_drops_a_database_it_did_not_make(gamma, backup, monkeypatch):
    # A deleted tenant's kept database, which the name chosen for the restore collides
    # with (two restores racing for a name): the restore fails and leaves it alone.
    kept = create_tenant("kappa")
    with tenant_context(kept):
        Note.objects.create(text="kappa's kept row")
    deprovision_tenant(kept, keep_database=True)
    monkeypatch.setattr(backups_module, "_new_database_name", lambda *args: kept.database_name)
    with pytest.raises(BackupError, match="exists"):
        restore_tenant(backup.path, replace=True)
    assert get_server("one").database_exists(kept.database_name)
    assert not TenantMove.objects.exists()
    assert Tenant.objects.get(slug="gamma").database_name == gamma.database_name


def test_a_tenant_being_restored_is_not_provisioned_by_create_tenant(gamma, backup):
    from tenancy.provisioning import ProvisioningError

    Tenant.objects.filter(pk=gamma.pk).update(status=TenantStatus.RESTORING)
    with pytest.raises(ProvisioningError, match="restoring"):
        create_tenant("gamma")


def test_a_killed_restore_of_a_new_tenant_is_undone_by_abort(gamma, backup):
    deprovision_tenant(gamma)
    # What a restore killed while restoring a deleted tenant leaves: the row, restoring,
    # and part of its database.
    tenant = Tenant.objects.create(slug="gamma", server="one", status=TenantStatus.RESTORING)
    get_server("one").create_database(tenant.database_name)
    abort_restore("gamma")
    assert not Tenant.objects.filter(slug="gamma").exists()
    assert not get_server("one").database_exists(tenant.database_name)
    # Run again instead, the restore finishes.
    Tenant.objects.create(slug="gamma", server="one", status=TenantStatus.RESTORING)
    restore_tenant(backup.path)
    assert len(texts(Tenant.objects.get(slug="gamma"))) == 25


def test_purge_leaves_a_file_that_retention_did_not_write(gamma, backup_retention, tmp_path):
    from datetime import timedelta

    from django.utils import timezone

    from tenancy.retention import archive_tenant, purge_tenants

    precious = tmp_path.parent / "precious.tar"
    precious.write_bytes(b"somebody's file")
    archive_tenant(gamma, days=1)
    written = Tenant.objects.get(slug="gamma").retained_backup
    Tenant.objects.filter(slug="gamma").update(retained_backup=str(precious))
    purge_tenants(timezone.now() + timedelta(days=2))
    assert precious.read_bytes() == b"somebody's file"
    Path(written).unlink()


@pytest.mark.skipif(BACKEND != "postgresql", reason="DIRECT is PostgreSQL's")
def test_a_direct_address_that_reaches_another_server_is_refused(gamma, settings, tmp_path):
    servers = settings.TENANCY["SERVERS"]
    other = servers["two"].get("DIRECT", servers["two"])
    settings.TENANCY = {
        **settings.TENANCY,
        "SERVERS": {
            **servers,
            "one": {**servers["one"], "DIRECT": {"HOST": other["HOST"], "PORT": other["PORT"]}},
        },
    }
    with pytest.raises(BackupError, match="DIRECT address reaches another server"):
        backup_tenant(gamma, tmp_path)
    assert list(tmp_path.iterdir()) == []


def lock_is_free(slug):
    """Whether another thread (on connections of its own) could take ``slug``'s lock."""
    found = []

    def attempt():
        try:
            with tenant_lock(slug, wait=False) as acquired:
                found.append(acquired)
        finally:
            connections.close_all()

    thread = threading.Thread(target=attempt)
    thread.start()
    thread.join()
    return found == [True]


def test_a_backup_holds_the_tenants_lock_until_it_ends(gamma, tmp_path, monkeypatch):
    seen = []
    locked = backups_module.backup_locked

    def backup_locked(tenant, path):
        seen.append(lock_is_free("gamma"))
        return locked(tenant, path)

    monkeypatch.setattr(backups_module, "backup_locked", backup_locked)
    backup_tenant(gamma, tmp_path / "first.tar")
    assert seen == [False]
    assert lock_is_free("gamma")
    # Inside the caller's transaction, the lock still ends with the backup.
    with transaction.atomic():
        backup_tenant(gamma, tmp_path / "second.tar")
        assert lock_is_free("gamma")
    assert seen == [False, False]


def test_a_backup_reads_the_tenant_again_under_its_lock(gamma, beta, tmp_path):
    """A tenant read before (the caller's), which says another tenant's database, is
    backed up from its own: the connection opened ahead for that database goes unused."""
    stale = Tenant.objects.get(slug="gamma")
    stale.server, stale.database_name = beta.server, beta.database_name
    report = backup_tenant(stale, tmp_path)
    assert read_manifest(report.path).database_name == gamma.database_name
    copy = restore_tenant(report.path, as_slug="gamma-copy")
    assert texts(Tenant.objects.get(slug=copy.slug)) == texts(gamma) != texts(beta)


def test_a_restore_with_nothing_to_migrate_runs_no_migrator(gamma, backup, monkeypatch):
    def migrate_tenant(tenant):
        raise AssertionError("the restored database had nothing to migrate")

    monkeypatch.setattr(backups_module, "migrate_tenant", migrate_tenant)
    report = restore_tenant(backup.path, as_slug="gamma-copy")
    assert report.migrations_applied == 0
    copy = Tenant.objects.get(slug="gamma-copy")
    assert ledger.states([copy])[copy.pk].status == ledger.CURRENT
    assert texts(copy) == texts(gamma)


@pytest.mark.skipif(BACKEND != "postgresql", reason="SQLite opens no connections ahead")
def test_a_connection_opened_ahead_is_the_one_used_and_a_failure_is_met_there(gamma, monkeypatch):
    server = get_server("one")
    with held_connections():
        server.connect_ahead(gamma.database_name)
        (ahead,) = held_wrappers().values()
        assert server.contents(gamma.database_name).migrations
        assert list(held_wrappers().values()) == [ahead.wrapper]  # the same, kept
    assert ahead.wrapper.connection is None  # closed with the block
    # A connect that failed ahead is raised, not tried a second time (a login refused
    # twice, a timeout waited out twice).
    wrapper_class = type(ahead.wrapper)
    connect, attempts = wrapper_class.get_new_connection, []

    def counted(self, parameters):
        attempts.append(parameters["dbname"])
        return connect(self, parameters)

    monkeypatch.setattr(wrapper_class, "get_new_connection", counted)
    with held_connections():
        server.connect_ahead("test_tenancy_no_such_database")
        with pytest.raises(OperationalError, match="test_tenancy_no_such_database"):
            server.contents("test_tenancy_no_such_database")
    assert attempts == ["test_tenancy_no_such_database"]
    # One that failed long before its use (a wait for a lock meanwhile) is tried again.
    monkeypatch.setattr(postgresql_backend, "FRESH_FAILURE", 0.0)
    with held_connections():
        server.connect_ahead("test_tenancy_made_meanwhile")
        held_wrappers()[next(iter(held_wrappers()))].join()
        server.create_database("test_tenancy_made_meanwhile")
        try:
            assert server.contents("test_tenancy_made_meanwhile").migrations == []
        finally:
            server.drop_database("test_tenancy_made_meanwhile")
    assert attempts.count("test_tenancy_made_meanwhile") == 2


def ddl_would_wait(table):
    """Whether a migration's ``ALTER TABLE`` of the main database's ``table`` would wait."""
    settings = connections["default"].get_connection_params()
    with psycopg.connect(**settings, autocommit=True) as raw:
        try:
            with raw.transaction():
                raw.execute("SET LOCAL lock_timeout = '200ms'")
                raw.execute(
                    sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(table))
                )
        except psycopg.errors.LockNotAvailable:
            return True
    return False


@pytest.mark.skipif(BACKEND != "postgresql", reason="table locks are PostgreSQL's")
def test_a_backup_keeps_no_lock_on_the_registrys_tables_while_it_dumps(
    gamma, tmp_path, monkeypatch
):
    """A deploy's migration of the registry never waits for a tenant's dump (and every
    request resolving a tenant behind it)."""
    seen = []
    dump = type(get_server("one")).dump

    def dump_and_look(self, name, sink, meanwhile=None):
        contents = dump(self, name, sink, meanwhile)
        seen.append([ddl_would_wait(model._meta.db_table) for model in (Tenant, Domain)])
        return contents

    monkeypatch.setattr(type(get_server("one")), "dump", dump_and_look)
    backup_tenant(gamma, tmp_path)
    assert seen == [[False, False]]


@pytest.mark.skipif(BACKEND != "postgresql", reason="SQLite opens no connections ahead")
def test_a_connection_opened_ahead_is_set_up_as_any_other(db_access):
    """Django's set-up of it (connection_created receivers, a role to take) runs in the
    thread that uses it, and its failure is raised there."""
    seen = []

    def receiver(sender, connection, **kwargs):
        if connection.alias == MAINTENANCE_ALIAS:
            with connection.cursor() as cursor:  # the using thread's: allowed
                cursor.execute("SET application_name = 'set up'")
            seen.append(threading.current_thread() is threading.main_thread())

    server = get_server("one")
    connection_created.connect(receiver)
    try:
        with held_connections():
            server.connect_ahead()
            with server._cursor() as cursor:
                cursor.execute("SHOW application_name")
                assert cursor.fetchone()[0] == "set up"
    finally:
        connection_created.disconnect(receiver)
    assert seen == [True]
    unusable = PostgreSQLServer(
        "one", {**server.template, "OPTIONS": {"assume_role": "tenancy_no_such_role"}}
    )
    with held_connections():
        unusable.connect_ahead()
        with pytest.raises(DatabaseError, match="tenancy_no_such_role"):
            unusable.database_exists("postgres")


@pytest.mark.skipif(BACKEND != "postgresql", reason="SQLite opens no connections ahead")
def test_a_connection_opened_ahead_and_never_used_is_not_waited_for(gamma, settings, tmp_path):
    """The server a tenant read before its lock was on (it moved since) accepts
    connections and never answers: the backup, from where the tenant is now, does not
    wait for it."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes the handshake; nothing ever answers
    old = {**settings.TENANCY["SERVERS"]["one"], "HOST": "127.0.0.1"}
    old["PORT"] = str(silent.getsockname()[1])
    settings.TENANCY = {**settings.TENANCY, "SERVERS": {**settings.TENANCY["SERVERS"], "old": old}}
    stale = Tenant.objects.get(slug="gamma")
    stale.server = "old"
    done = []

    def back_up():
        try:
            done.append(backup_tenant(stale, tmp_path))
        finally:
            connections.close_all()  # this thread's

    thread = threading.Thread(target=back_up)
    try:
        thread.start()
        thread.join(timeout=60)  # without a connect timeout, waiting would be forever
        assert done
        assert read_manifest(done[0].path).server == "one"
    finally:
        silent.close()  # the connection attempt ends
        thread.join()


class Interrupted(BaseException):
    """Stands for a KeyboardInterrupt or a SystemExit."""


@pytest.mark.skipif(BACKEND != "postgresql", reason="SQLite opens no connections ahead")
def test_an_interrupt_while_a_connection_opened_ahead_is_set_up_leaves_it_closed(db_access):
    def receiver(sender, connection, **kwargs):
        if connection.alias == MAINTENANCE_ALIAS:
            raise Interrupted

    server = get_server("one")
    connection_created.connect(receiver)
    try:
        with held_connections():
            server.connect_ahead()
            (ahead,) = held_wrappers().values()
            ahead.join()
            raw = ahead.raw
            with pytest.raises(Interrupted):
                server.database_exists("postgres")
            assert raw.closed
    finally:
        connection_created.disconnect(receiver)


@pytest.mark.skipif(BACKEND != "postgresql", reason="DIRECT is PostgreSQL's")
def test_the_direct_routes_check_keeps_no_connection_open(gamma):
    """Asked once per dump or restore, it leaves nothing open for the rest of either."""
    one = get_server("one")
    address = {"HOST": one.template["HOST"], "PORT": one.template["PORT"]}
    server = PostgreSQLServer("one", {**one.template, "DIRECT": address})
    with held_connections():
        server._check_direct_route(gamma.database_name)
        assert held_wrappers() == {}


@pytest.mark.skipif(BACKEND != "sqlite", reason="a SQLite file is edited here")
def test_a_restored_database_that_cannot_be_read_is_one_clean_error(gamma, backup, tmp_path):
    """A trusted backup from elsewhere whose migrations table is of another shape."""
    path = Path(backup.path)
    work = tmp_path / "work.sqlite3"
    work.write_bytes(read_members(path)["database.sqlite3"])
    with contextlib.closing(sqlite3.connect(work)) as database:
        database.execute("ALTER TABLE django_migrations RENAME COLUMN app TO label")
        database.commit()
    replace_dump(path, work.read_bytes())
    with pytest.raises(BackupError, match="cannot be read"):
        restore_tenant(path, as_slug="gamma-copy", trust=True)
    assert not Tenant.objects.filter(slug="gamma-copy").exists()
