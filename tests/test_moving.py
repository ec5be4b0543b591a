"""move_tenant: a tenant's database copied to another server, verified and switched; every
refusal and failure leaves it serving from its source, and a crashed move is finished or
undone by running it again."""

import json
import sqlite3
from pathlib import Path

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, transaction

from tenancy import moving as moving_module
from tenancy import tenant_context
from tenancy.backends import get_server
from tenancy.connections import connection_for
from tenancy.exceptions import TenancyError
from tenancy.models import MoveStep, Tenant, TenantMove, TenantStatus
from tenancy.moving import MoveError, abort_move, move_tenant
from tenancy.provisioning import ProvisioningError, create_tenant, deprovision_tenant
from tests.helpers import recorded_move, write_behind_tenancy
from tests.settings import BACKEND
from tests.tenantapp.models import Note


def exists(server, tenant):
    return get_server(server).database_exists(tenant.database_name)


def texts(tenant):
    with tenant_context(tenant):
        return sorted(Note.objects.values_list("text", flat=True))


def test_move_copies_every_row_switches_and_drops_the_source(gamma, beta, client):
    before = texts(gamma)
    with tenant_context(beta):
        Note.objects.create(text="beta's own")
    report = move_tenant(gamma, "two")

    tenant = Tenant.objects.get(slug="gamma")
    assert (tenant.server, tenant.status) == ("two", TenantStatus.ACTIVE)
    assert not TenantMove.objects.exists()
    assert not exists("one", tenant)
    assert exists("two", tenant)
    assert texts(tenant) == before
    assert report.rows >= 26
    assert report.tables >= 3
    assert set(report.steps) == {
        "prepared",
        "waited",
        "copied",
        "verified",
        "switched",
        "source dropped",
    }
    # This process serves it from the new server at once, new rows included, and beta's
    # database (on the same server now) is untouched.
    response = client.get("/notes/", HTTP_HOST="gamma.example.test")
    assert response.status_code == 200
    assert "note 00" in response.content.decode()
    assert "beta's own" not in response.content.decode()
    with tenant_context(tenant):
        Note.objects.create(text="after the move")
        assert Note.objects.latest("pk").pk > 25  # the sequence came along
    assert texts(beta) == ["beta's own"]
    assert "after the move" not in texts(beta)


def test_keep_source_keeps_it_read_only_and_no_newcomer_gets_it(gamma):
    move_tenant(gamma, "two", keep_source=True)
    assert exists("one", gamma)
    assert exists("two", gamma)
    if BACKEND == "postgresql":
        server = get_server("one")
        settings = server.template
        with (
            psycopg.connect(
                host=settings["HOST"],
                port=settings["PORT"],
                user=settings["USER"],
                dbname=gamma.database_name,
            ) as raw,
            pytest.raises(psycopg.errors.ReadOnlySqlTransaction),
        ):
            raw.execute("INSERT INTO tenantapp_note (text) VALUES ('late')")
    # Moving back is refused while the kept source is there: never over a database.
    with pytest.raises(MoveError, match="exists there already"):
        move_tenant("gamma", "one")
    assert Tenant.objects.get(slug="gamma").server == "two"


def test_a_database_on_the_target_is_never_overwritten_or_dropped(gamma):
    target = get_server("two")
    target.create_database(gamma.database_name)  # someone else's, by that name
    with pytest.raises(MoveError, match=r"exists there already. Nothing was changed"):
        move_tenant(gamma, "two")
    assert target.database_exists(gamma.database_name)
    tenant = Tenant.objects.get(slug="gamma")
    assert (tenant.server, tenant.status) == ("one", TenantStatus.ACTIVE)
    assert not TenantMove.objects.exists()
    target.drop_database(gamma.database_name)


def test_unapplied_migrations_stop_the_move_before_anything_changes(gamma, migrations):
    migrations("tests.migrations_v2")  # the project now has a migration gamma lacks
    with pytest.raises(
        MoveError, match=r"migrations are not current.*migrate_tenants --tenant gamma"
    ):
        move_tenant(gamma, "two")
    tenant = Tenant.objects.get(slug="gamma")
    assert (tenant.server, tenant.status) == ("one", TenantStatus.ACTIVE)
    assert not exists("two", tenant)


def test_a_row_written_to_the_source_during_the_copy_fails_verification(gamma, monkeypatch):
    copy = moving_module._copy

    def copy_then_write(source, target, name, progress):
        copied = copy(source, target, name, progress)
        write_behind_tenancy("one", name, "written during the copy", past_read_only=True)
        return copied

    monkeypatch.setattr(moving_module, "_copy", copy_then_write)
    with pytest.raises(MoveError, match=r"tenantapp_note has 25 rows, the source 26.*as before"):
        move_tenant(gamma, "two")
    # Undone: the copy is dropped, the tenant serves (and writes) from its source.
    tenant = Tenant.objects.get(slug="gamma")
    assert (tenant.server, tenant.status) == ("one", TenantStatus.ACTIVE)
    assert not TenantMove.objects.exists()
    assert not exists("two", tenant)
    with tenant_context(tenant):
        Note.objects.create(text="writable again")
    assert "written during the copy" in texts(tenant)
    assert "writable again" in texts(tenant)


def test_while_moving_reads_are_served_and_writes_get_503(gamma, client, monkeypatch):
    seen = {}

    def copy_and_look(source, target, name, progress):
        # The source is read-only now and the copy under way.
        read = client.get("/notes/", HTTP_HOST="gamma.example.test")
        seen["read"] = (read.status_code, "note 00" in read.content.decode())
        write = client.post("/notes/", HTTP_HOST="gamma.example.test")
        seen["write"] = (write.status_code, write["Retry-After"])
        if BACKEND == "postgresql":  # a read that writes after all: the server refuses it
            seen["read that writes"] = client.get(
                "/write-ok/", HTTP_HOST="gamma.example.test"
            ).status_code
        with pytest.raises(TenancyError, match="is being moved"):
            deprovision_tenant(Tenant.objects.get(slug="gamma"))
        return copy(source, target, name, progress)

    copy = moving_module._copy
    monkeypatch.setattr(moving_module, "_copy", copy_and_look)
    move_tenant(gamma, "two")
    # Reads are served where the server keeps writes out of the source meanwhile.
    assert seen.pop("read") == ((200, True) if BACKEND == "postgresql" else (503, False))
    assert seen.pop("write") == (503, "120")
    assert seen == ({"read that writes": 503} if BACKEND == "postgresql" else {})
    assert client.get("/notes/", HTTP_HOST="gamma.example.test").status_code == 200
    assert "whole order" not in texts(Tenant.objects.get(slug="gamma"))


def test_every_request_gets_503_while_moving_when_reads_are_not_served(
    gamma, client, monkeypatch, settings
):
    settings.TENANCY = {**settings.TENANCY, "READ_ONLY_WHILE_MOVING": False}
    seen = []

    def copy_and_look(source, target, name, progress):
        seen.append(client.get("/notes/", HTTP_HOST="gamma.example.test").status_code)
        return copy(source, target, name, progress)

    copy = moving_module._copy
    monkeypatch.setattr(moving_module, "_copy", copy_and_look)
    move_tenant(gamma, "two")
    assert seen == [503]


def record_move(tenant, step):
    """The row a move from server one to two writes before STEP (at the switch, with the
    source's fingerprint as verified)."""
    verified = ""
    if step == MoveStep.SWITCHED:
        verified = json.dumps(get_server("one").fingerprint(tenant.database_name).as_json())
    recorded_move(tenant, step, verified=verified)


def crashed_while_copying(tenant):
    """What a move killed during the copy leaves: the row, the tenant marked moving, a
    partial target database."""
    record_move(tenant, MoveStep.COPYING)
    Tenant.objects.filter(pk=tenant.pk).update(status=TenantStatus.MOVING)
    get_server("two").create_database(tenant.database_name)


def test_a_crashed_move_is_finished_by_running_it_again(gamma, capsys):
    before = texts(gamma)
    crashed_while_copying(gamma)
    with pytest.raises(CommandError, match=r"being moved to server 'two'.*--abort"):
        call_command("move_tenant", "gamma", "--server", "one")
    call_command("move_tenant", "gamma", "--server", "two")
    out = capsys.readouterr().out
    assert "continuing the move recorded before" in out
    assert "Tenant gamma is on server two" in out
    tenant = Tenant.objects.get(slug="gamma")
    assert (tenant.server, tenant.status) == ("two", TenantStatus.ACTIVE)
    assert texts(tenant) == before
    assert not exists("one", tenant)


def test_a_crashed_move_is_undone_with_abort(gamma):
    before = texts(gamma)
    crashed_while_copying(gamma)
    call_command("move_tenant", "gamma", "--abort")
    tenant = Tenant.objects.get(slug="gamma")
    assert (tenant.server, tenant.status) == ("one", TenantStatus.ACTIVE)
    assert not exists("two", tenant)
    assert texts(tenant) == before
    with pytest.raises(MoveError, match="not being moved"):
        abort_move("gamma")


def test_a_move_that_switched_is_finished_not_undone(gamma):
    move_tenant(gamma, "two", keep_source=True)
    record_move(gamma, MoveStep.SWITCHED)  # then pretend it crashed before the drop
    with pytest.raises(MoveError, match="serves from server 'two' already"):
        abort_move("gamma")
    move_tenant("gamma", "two")
    assert not exists("one", gamma)
    assert exists("two", gamma)
    assert Tenant.objects.get(slug="gamma").server == "two"


def test_command_json_and_refusals(gamma, capsys):
    call_command("move_tenant", "gamma", "--server", "two", "--json")
    report = json.loads(capsys.readouterr().out)
    assert (report["source_server"], report["target_server"]) == ("one", "two")
    assert report["bytes_copied"] > 0
    assert "verified" in report["steps"]
    with pytest.raises(CommandError, match="on server 'two' already"):
        call_command("move_tenant", "gamma", "--server", "two")
    with pytest.raises(CommandError, match="does not define it"):
        call_command("move_tenant", "gamma", "--server", "three")
    with pytest.raises(CommandError, match="no tenant 'nobody'"):
        call_command("move_tenant", "nobody", "--server", "one")


def test_a_suspended_tenant_stays_suspended(gamma):
    Tenant.objects.filter(pk=gamma.pk).update(status=TenantStatus.SUSPENDED)
    move_tenant("gamma", "two")
    tenant = Tenant.objects.get(slug="gamma")
    assert (tenant.server, tenant.status) == ("two", TenantStatus.SUSPENDED)


def test_two_entries_for_one_server_switch_the_registry_only(gamma, settings):
    from tenancy.conf import tenancy_settings

    settings.TENANCY = {
        **settings.TENANCY,
        "SERVERS": {**settings.TENANCY["SERVERS"], "one-again": tenancy_settings.SERVERS["one"]},
    }
    report = move_tenant(gamma, "one-again")
    assert set(report.steps) == {"switched"}
    tenant = Tenant.objects.get(slug="gamma")
    assert tenant.server == "one-again"
    assert len(texts(tenant)) == 25
    assert gamma.database_name in str(connection_for(tenant).settings_dict["NAME"])


def test_a_move_inside_a_transaction_on_the_main_database_is_refused(gamma):
    # Other processes would not see the tenant marked moving before its copy is made.
    with transaction.atomic(), pytest.raises(MoveError, match="inside a transaction"):
        move_tenant(gamma, "two")
    tenant = Tenant.objects.get(slug="gamma")
    assert (tenant.server, tenant.status) == ("one", TenantStatus.ACTIVE)


def run_sql(server, database_name, *statements):
    """Statements in a database of a test server, outside tenancy's connections."""
    if BACKEND == "sqlite":
        with sqlite3.connect(get_server(server).path(database_name)) as raw:
            for statement in statements:
                raw.execute(statement)
        return
    with get_server(server)._cursor(database_name) as cursor:
        for statement in statements:
            cursor.execute(statement)


def test_the_checksum_covers_a_column_named_like_the_row(db_access):
    server = get_server("two")
    for name, body in (("test_tenancy_fp_a", "one"), ("test_tenancy_fp_b", "two")):
        server.create_database(name)
        run_sql(
            "two",
            name,
            "CREATE TABLE x (id integer PRIMARY KEY, t integer, body text)",
            f"INSERT INTO x VALUES (1, 1, '{body}')",
        )
    first, second = (
        server.fingerprint("test_tenancy_fp_a"),
        server.fingerprint("test_tenancy_fp_b"),
    )
    assert first.differences(second) == [
        f"table {'public.' if BACKEND == 'postgresql' else ''}x has rows that differ from "
        "the source's"
    ]


def test_entries_that_look_alike_are_asked_whether_they_are_one_database(gamma, monkeypatch):
    # Two entries whose addresses compare equal (a socket directory and a host name can)
    # but that reach two servers: the move copies, never just repoints the registry.
    kind = type(get_server("one"))
    monkeypatch.setattr(kind, "address", property(lambda self: ("alike",)))
    report = move_tenant(gamma, "two")
    assert "copied" in report.steps
    assert texts(Tenant.objects.get(slug="gamma"))[:1] == ["note 00"]


def test_an_abort_never_drops_the_source_when_the_target_entry_now_reaches_it(gamma, settings):
    before = texts(gamma)
    crashed_while_copying(gamma)
    get_server("two").drop_database(gamma.database_name)
    servers = settings.TENANCY["SERVERS"]
    settings.TENANCY = {**settings.TENANCY, "SERVERS": {**servers, "two": servers["one"]}}
    with pytest.raises(MoveError, match=r"reaches the source database .* not dropped"):
        abort_move("gamma")
    assert exists("one", gamma)
    settings.TENANCY = {**settings.TENANCY, "SERVERS": servers}
    abort_move("gamma")
    assert texts(Tenant.objects.get(slug="gamma")) == before


def test_the_target_of_a_move_is_no_other_tenants_meanwhile(gamma):
    crashed_while_copying(gamma)
    with pytest.raises(ProvisioningError, match="where tenant 'gamma' is being moved"):
        create_tenant("delta", server="two", fields={"database_name": gamma.database_name})
    abort_move("gamma")


def test_a_tenant_whose_move_has_switched_is_not_deleted_before_it_finishes(gamma):
    move_tenant(gamma, "two", keep_source=True)
    record_move(gamma, MoveStep.SWITCHED)  # then pretend it crashed before the drop
    with pytest.raises(TenancyError, match="is being moved"):
        deprovision_tenant(Tenant.objects.get(slug="gamma"))
    assert exists("two", gamma)


def test_keep_source_given_to_the_run_that_finishes_is_honoured(gamma):
    crashed_while_copying(gamma)
    report = move_tenant("gamma", "two", keep_source=True)
    assert report.source_kept
    assert exists("one", gamma)


def test_a_late_write_to_the_source_is_never_dropped(gamma, monkeypatch):
    switch = moving_module._switch

    def write_then_switch(tenant, move, verified):
        # A process that still has the source open writes to it after the verification.
        statement = "INSERT INTO tenantapp_note (text) VALUES ('late')"
        if BACKEND == "sqlite":
            run_sql("one", move.database_name, statement)
        else:  # the server keeps it out
            with pytest.raises(DatabaseError, match="read-only transaction"):
                run_sql("one", move.database_name, statement)
        switch(tenant, move, verified)

    monkeypatch.setattr(moving_module, "_switch", write_then_switch)
    report = move_tenant(gamma, "two")
    if BACKEND == "sqlite":  # nothing keeps a writer out: the source is kept, with the row
        assert report.source_kept
        assert "late" in [
            row[0]
            for row in sqlite3.connect(get_server("one").path(gamma.database_name)).execute(
                "SELECT text FROM tenantapp_note"
            )
        ]
    else:
        assert not report.source_kept
        assert not exists("one", gamma)


def test_an_unreachable_target_stops_the_move_with_one_line(gamma, settings):
    servers = settings.TENANCY["SERVERS"]
    if BACKEND == "sqlite":
        broken = {**servers["two"], "DIRECTORY": "/proc/tenancy-cannot-write-here"}
    else:
        broken = {**servers["two"], "PORT": "1", "OPTIONS": {"connect_timeout": 2}}
    settings.TENANCY = {**settings.TENANCY, "SERVERS": {**servers, "two": broken}}
    with pytest.raises(CommandError) as stopped:
        call_command("move_tenant", "gamma", "--server", "two")
    assert "Tenant 'gamma'" in str(stopped.value)
    assert "\n" not in str(stopped.value)
    tenant = Tenant.objects.get(slug="gamma")
    assert (tenant.server, tenant.status) == ("one", TenantStatus.ACTIVE)
    assert not TenantMove.objects.exists()


def test_an_inherited_libpq_service_does_not_redirect_the_copy(gamma, monkeypatch, tmp_path):
    # libpq lets PGSERVICE outrank PGHOST/PGDATABASE: the copy must still read the tenant's
    # database, not the one such a service names (here the main database).
    main = get_server("one").template
    (tmp_path / "services.conf").write_text(
        f"[elsewhere]\nhost={main.get('HOST', '')}\nport={main.get('PORT', '')}\n"
        "dbname=test_tenancy\n"
    )
    monkeypatch.setenv("PGSERVICEFILE", str(tmp_path / "services.conf"))
    monkeypatch.setenv("PGSERVICE", "elsewhere")
    monkeypatch.setenv("PGDATABASE", "test_tenancy")
    before = texts(gamma)
    move_tenant(gamma, "two")
    assert texts(Tenant.objects.get(slug="gamma")) == before


@pytest.mark.skipif(BACKEND != "postgresql", reason="client programs are PostgreSQL's")
def test_client_programs_read_the_password_from_a_file_of_the_owners_only(db_access):
    with get_server("one").client_connection("test_tenancy_gamma") as (dsn, environment):
        service_file = Path(environment["PGSERVICEFILE"])
        assert dsn == "service=tenancy"
        assert service_file.stat().st_mode & 0o077 == 0
        assert "dbname=test_tenancy_gamma" in service_file.read_text().splitlines()
    assert not service_file.exists()


def test_a_delete_while_another_run_holds_the_tenant_is_refused(gamma):
    from tenancy.tenant_locks import tenant_lock

    with tenant_lock("gamma"), pytest.raises(TenancyError, match="moved or deleted by another"):
        deprovision_tenant(Tenant.objects.get(slug="gamma"))
    assert exists("one", gamma)
    deprovision_tenant(Tenant.objects.get(slug="gamma"))
    assert not exists("one", gamma)


def test_the_source_of_a_move_is_no_other_tenants_meanwhile(gamma):
    move_tenant(gamma, "two", keep_source=True)
    record_move(Tenant.objects.get(slug="gamma"), MoveStep.SWITCHED)
    with pytest.raises(ProvisioningError, match="where tenant 'gamma' is being moved"):
        create_tenant("delta", server="one", fields={"database_name": gamma.database_name})
