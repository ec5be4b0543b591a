"""migrate_tenants and migrate_tenant: order, cost, failures, locks, reports."""

import io
import json
import os
import threading
from contextlib import ExitStack, contextmanager

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.db.migrations.recorder import MigrationRecorder
from django.db.models.signals import post_migrate
from django.test.utils import CaptureQueriesContext

from tenancy import tenant_context
from tenancy.connections import alias_for, registered_aliases
from tenancy.management.commands import migrate_tenants as migrate_tenants_command
from tenancy.migration import (
    FAILED,
    LOCK_KEY,
    LOCKED,
    MIGRATED,
    PENDING,
    UP_TO_DATE,
    migrate_tenant,
    migration_lock,
)
from tenancy.models import Tenant, TenantStatus
from tests.conftest import FLEET
from tests.settings import BACKEND, SERVER_1
from tests.tenantapp.models import Note

SLUGS = FLEET


def run(*args):
    """migrate_tenants' output lines, and the CommandError it raised (or None)."""
    import io

    out = io.StringIO()
    error = None
    try:
        call_command("migrate_tenants", *args, stdout=out, no_color=True)
    except CommandError as exc:
        error = exc
    return out.getvalue().splitlines(), error


def tenant_lines_json(lines):
    return [line for line in lines if line.startswith("{") and '"default"' not in line]


def tenant_lines(lines):
    return [line for line in lines if line.startswith("[") and not line.startswith("[main]")]


def test_up_to_date_tenants_cost_one_query_each(fleet, monkeypatch):
    # Checked in this thread (they are checked 8 at once in threads of their own), where
    # the queries are captured.
    monkeypatch.setattr(migrate_tenants_command, "CHECK_JOBS", 1)
    aliases = [alias_for(tenant) for tenant in fleet]
    with ExitStack() as stack:
        captured = [stack.enter_context(CaptureQueriesContext(connections[a])) for a in aliases]
        lines, error = run()
    assert error is None
    assert [len(queries) for queries in captured] == [1, 1, 1]
    assert [line.split()[1:4] for line in tenant_lines(lines)] == [
        ["beta-two", "up", "to"],
        ["gamma", "up", "to"],
        ["omega", "up", "to"],
    ]
    assert lines[-1].startswith("3 tenant(s): 0 migrated, 3 up to date, 0 failed")


def test_main_database_is_migrated_first(fleet, migrations):
    lines, error = run()
    assert error is None
    assert lines.index("Main database:") < lines.index("Tenant databases:")


def test_new_migration_reaches_every_tenant_in_slug_order(fleet, migrations):
    migrations("tests.migrations_v2")
    lines, error = run()
    assert error is None
    assert [line.split()[:4] for line in tenant_lines(lines)] == [
        ["[1/3]", "beta-two", "1", "applied"],
        ["[2/3]", "gamma", "1", "applied"],
        ["[3/3]", "omega", "1", "applied"],
    ]
    for tenant in fleet:
        with tenant_context(tenant):
            # RunPython used the model without `using=`: it ran inside the tenant.
            assert list(Note.objects.values_list("text", flat=True)) == ["welcome"]
    lines, error = run()
    assert lines[-1].startswith("3 tenant(s): 0 migrated, 3 up to date")
    assert registered_aliases() == {}  # nothing kept per tenant


def test_parallel_jobs_migrate_every_tenant(fleet, migrations):
    migrations("tests.migrations_v2")
    lines, error = run("--jobs", "3", "--jobs-per-server", "1")
    assert error is None, "\n".join(lines)
    assert sorted(line.split()[1] for line in tenant_lines(lines)) == SLUGS
    assert lines[-1].startswith("3 tenant(s): 3 migrated, 0 up to date, 0 failed")
    for tenant in fleet:
        with tenant_context(tenant):
            assert Note.objects.count() == 1


def test_parallel_jobs_are_processes_of_their_own(fleet, migrations):
    migrated_in: dict[str, int] = {}

    def record(sender, using, **kwargs):
        if using.startswith("tenant:"):
            pid = os.getpid()
            # Sent in the worker: the worker's own process writes to a pipe of the test.
            os.write(pipe_w, f"{using} {pid}\n".encode())

    pipe_r, pipe_w = os.pipe()
    post_migrate.connect(record, dispatch_uid="test-jobs-pids")
    try:
        migrations("tests.migrations_v2")
        lines, error = run("--jobs", "2")
    finally:
        post_migrate.disconnect(dispatch_uid="test-jobs-pids")
        os.close(pipe_w)
    with os.fdopen(pipe_r) as reported:
        for line in reported:
            alias, pid = line.split()
            migrated_in[alias.removeprefix("tenant:").partition("#")[0]] = int(pid)
    assert error is None, "\n".join(lines)
    assert sorted(migrated_in) == SLUGS
    assert os.getpid() not in migrated_in.values()
    # The workers left the connections they inherited alone: the test's own still works.
    assert Tenant.objects.count() == len(SLUGS)
    for tenant in fleet:
        with tenant_context(tenant):
            assert Note.objects.count() == 1  # the data migration ran, in the worker


def test_a_killed_worker_fails_its_tenant_and_the_others_go_on(fleet, migrations, monkeypatch):
    monkeypatch.setenv("TENANCY_TEST_PROCESS", str(os.getpid()))
    migrations("tests.migrations_worker_killed")
    lines, error = run("--jobs", "2", "--json")
    results = {r["slug"]: r for r in map(json.loads, tenant_lines_json(lines))}
    assert sorted(results) == SLUGS
    assert results["beta-two"]["status"] == "failed"
    assert "worker process died" in results["beta-two"]["error"]
    for slug in ("gamma", "omega"):
        # Migrated, or failed beside the killed worker (the pool ends every job it had).
        assert (
            results[slug]["status"] == MIGRATED
            or "worker process died" in (results[slug]["error"])
        )
    assert error is not None
    assert "beta-two" in str(error)

    # The killed worker's transaction was rolled back: a re-run migrates what is left.
    migrations("tests.migrations_v2")
    lines, error = run("--jobs", "2")
    assert error is None, "\n".join(lines)
    for tenant in fleet:
        with tenant_context(tenant):
            assert ("tenantapp", "0002_note_text_index") in set(
                MigrationRecorder(connections[alias_for(tenant)]).applied_migrations()
            )


def test_one_failing_tenant_does_not_stop_the_others(fleet, migrations):
    migrations("tests.migrations_failing")
    lines, error = run()
    assert "this migration fails for beta" in tenant_lines(lines)[0]
    assert "FAILED" in tenant_lines(lines)[0]
    assert lines[-1].startswith("3 tenant(s): 2 migrated, 0 up to date, 1 failed")
    assert error is not None
    assert "1 tenant(s) failed: beta-two" in str(error)

    # The failed migration left nothing behind, and a re-run picks up exactly that tenant.
    migrations("tests.migrations_v2")
    lines, error = run("--json")
    assert error is None
    results = {r["slug"]: r for r in map(json.loads, lines)}
    assert (results["beta-two"]["status"], results["beta-two"]["applied"]) == (MIGRATED, 1)
    assert results["gamma"]["status"] == results["omega"]["status"] == UP_TO_DATE


def test_fail_fast_stops_at_the_first_failure(fleet, migrations):
    migrations("tests.migrations_failing")
    lines, error = run("--fail-fast")
    assert len(tenant_lines(lines)) == 1
    assert "2 tenant(s) were not started (--max-failures)" in str(error)
    lines, error = run("--max-failures", "2")
    assert len(tenant_lines(lines)) == 3  # one failure only: every tenant was tried
    assert "not started" not in str(error)


def test_a_failing_canary_stops_the_run_before_the_other_tenants(fleet, migrations):
    migrations("tests.migrations_failing")  # fails for beta-two, the first in slug order
    lines, error = run("--canary", "1")
    assert [line.split()[1] for line in tenant_lines(lines)] == ["beta-two"]
    assert "The canary failed: 2 other tenant(s) were not started" in str(error)
    lines, error = run("--list", "--json")
    pending = {r["slug"]: r["status"] for r in map(json.loads, tenant_lines_json(lines))}
    # From the ledger: beta-two's run failed, the others were not started.
    assert pending == {"beta-two": FAILED, "gamma": PENDING, "omega": PENDING}

    # A cohort by a field of the tenant: those on server two (beta-two, which fails).
    lines, error = run("--canary", "server=two")
    assert [line.split()[1] for line in tenant_lines(lines)] == ["beta-two"]
    assert "The canary failed: 2 other tenant(s) were not started" in str(error)

    # A canary that passes: the named tenants first, then the others.
    lines, error = run("--canary", "omega,gamma")
    assert [line.split()[1] for line in tenant_lines(lines)] == ["gamma", "omega", "beta-two"]
    assert "1 tenant(s) failed: beta-two" in str(error)
    assert "not started" not in str(error)
    lines, error = run("--canary", "colour=blue")
    assert "the tenant model has no such field" in str(error)
    lines, error = run("--canary", "nobody")
    assert "--canary names 'nobody', which is not among" in str(error)
    assert tenant_lines(lines) == []


@pytest.mark.skipif(BACKEND != "postgresql", reason="lock_timeout is PostgreSQL's")
def test_lock_timeout_fails_a_migration_blocked_by_a_busy_table(fleet, migrations):
    from tenancy.backends import get_server

    gamma = fleet[1]
    migrations("tests.migrations_v2")  # adds an index on the notes' text
    with get_server("one")._cursor(gamma.database_name) as busy:
        busy.execute("BEGIN; INSERT INTO tenantapp_note (text) VALUES ('in flight')")
        lines, error = run("--tenant", "gamma", "--lock-timeout", "0.3")
        busy.execute("ROLLBACK")
    assert "waited more than 0.3s for a lock on a busy table (--lock-timeout)" in lines[-2]
    assert "1 tenant(s) failed: gamma" in str(error)
    lines, error = run("--tenant", "gamma", "--lock-timeout", "5")
    assert error is None, "\n".join(lines)
    assert tenant_lines(lines)[0].split()[2:4] == ["1", "applied"]


def test_unreachable_server_fails_its_tenants_only(fleet, migrations, settings):
    secret = "pw-that-must-not-leak"
    if BACKEND == "postgresql":
        down = {**SERVER_1, "PORT": "1", "PASSWORD": secret}  # nothing listens there
    else:
        down = {**SERVER_1, "DIRECTORY": "/dev/null/nowhere", "PASSWORD": secret}
    settings.TENANCY = {
        **settings.TENANCY,
        "SERVERS": {**settings.TENANCY["SERVERS"], "down": down},
    }
    Tenant.objects.create(slug="lost", name="Lost", server="down", status=TenantStatus.ACTIVE)
    migrations("tests.migrations_v2")
    lines, error = run()
    statuses = {line.split()[1]: line.split()[2] for line in tenant_lines(lines)}
    assert statuses == {"beta-two": "1", "gamma": "1", "lost": "FAILED:", "omega": "1"}
    assert "1 tenant(s) failed: lost" in str(error)
    assert secret not in "\n".join(lines) + str(error)


def test_main_database_failure_migrates_no_tenant(fleet, migrations):
    migrations("tests.migrations_shared_failing", app="sharedapp")
    lines, error = run()
    assert "Migrating the main database failed, so no tenant was migrated" in str(error)
    assert "the main database migration fails" in str(error)
    assert tenant_lines(lines) == []


def test_check_exits_1_when_anything_is_unapplied(fleet, migrations):
    run("--check")  # up to date: no exit
    migrations("tests.migrations_v2")
    with pytest.raises(SystemExit) as exited:
        run("--check")
    assert exited.value.code == 1
    with tenant_context(fleet[0]):
        assert Note.objects.count() == 0  # --check changed nothing


def test_plan_and_list(fleet, migrations):
    migrations("tests.migrations_v2")
    lines, error = run("--plan", "--tenant", "gamma")
    assert error is None
    assert lines[0].startswith("[main] default  ")
    gamma = next(i for i, line in enumerate(lines) if line.startswith("[1/1] gamma"))
    assert lines[gamma].startswith("[1/1] gamma  1 unapplied")
    assert lines[gamma + 1] == "    tenantapp.0002_note_text_index"
    assert lines[gamma + 2].startswith("1 tenant(s): 0 migrated, 0 up to date, 1 with unapplied")

    lines, error = run("--list", "--server", "two")
    (beta,) = tenant_lines(lines)
    slug, applied, *rest = beta.split()[1:6]
    assert (slug, rest) == ("beta-two", ["applied,", "1", "unapplied"])
    assert int(applied) > 1


def test_unknown_tenant_is_an_error(fleet):
    _, error = run("--tenant", "gamma", "--tenant", "nobody")
    assert "No tenant to migrate with slug 'nobody'" in str(error)


def test_inactive_tenants_are_skipped_unless_named(fleet, migrations):
    Tenant.objects.filter(slug="omega").update(status=TenantStatus.FAILED)
    migrations("tests.migrations_v2")
    lines, error = run()
    assert error is None
    assert [line.split()[1] for line in tenant_lines(lines)] == ["beta-two", "gamma"]
    lines, error = run("--tenant", "omega")
    assert error is None
    assert [line.split()[1:3] for line in tenant_lines(lines)] == [["omega", "1"]]


def two_migrators_at_once(tenant):
    """``migrate_tenant(tenant)`` in two threads started together: their results."""
    barrier, results = threading.Barrier(2, timeout=60), []

    def migrate():
        barrier.wait()
        results.append(migrate_tenant(tenant))
        connections.close_all()

    threads = [threading.Thread(target=migrate) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_two_migrators_never_work_on_one_database_at_once(fleet, migrations):
    migrations("tests.migrations_v2")
    gamma = fleet[1]
    results = two_migrators_at_once(gamma)
    assert sorted(r.status for r in results) == [MIGRATED, UP_TO_DATE], results
    with tenant_context(gamma):
        assert Note.objects.count() == 1  # the data migration ran once


@pytest.mark.skipif(BACKEND != "postgresql", reason="the lock in the run's transaction")
@pytest.mark.parametrize("isolation", [None, "repeatable read"])
def test_a_migrating_tenant_needs_no_connection_but_its_own(fleet, migrations, isolation):
    """The migration lock is taken in the tenant's transaction, which reads under READ
    COMMITTED whatever the connection's isolation level; no tenant after the plan's
    first lists the tables of its database."""
    import psycopg
    from django.db.backends.signals import connection_created

    from tenancy.migration import MigrationState

    migrations("tests.migrations_v2")
    state = MigrationState()
    gamma, omega = fleet[1], fleet[2]
    assert migrate_tenant(gamma, state=state).status == MIGRATED
    connection = connections[alias_for(omega)]
    if isolation:
        level = psycopg.IsolationLevel.REPEATABLE_READ
        connection.settings_dict["OPTIONS"] = {"isolation_level": level}
    opened = []

    def note(sender, connection, **kwargs):
        opened.append(connection.alias)

    with CaptureQueriesContext(connection) as captured:
        connection_created.connect(note)
        try:
            assert migrate_tenant(omega, state=state).status == MIGRATED
        finally:
            connection_created.disconnect(note)
    statements = [query["sql"] for query in captured]
    assert not [sql for sql in statements if "pg_table_is_visible" in sql]
    assert opened == []
    lock = statements.index(f"SELECT pg_advisory_xact_lock({LOCK_KEY})")
    assert statements[lock - 1] == "SET TRANSACTION ISOLATION LEVEL READ COMMITTED"
    with tenant_context(omega):
        assert Note.objects.count() == 1


@pytest.mark.skipif(BACKEND != "postgresql", reason="a server default of PostgreSQL's")
def test_two_migrators_never_both_migrate_under_a_repeatable_read_default(fleet, migrations):
    """A database whose sessions default to REPEATABLE READ: the second migrator's read
    under the lock still sees what the first committed, and the data migration runs once."""
    migrations("tests.migrations_v3")  # 0003_welcome: RunPython only, no DDL to collide
    gamma = fleet[1]
    with connections["default"].cursor() as cursor:
        cursor.execute(
            f'ALTER DATABASE "{gamma.database_name}" '
            "SET default_transaction_isolation = 'repeatable read'"
        )
    connections[alias_for(gamma)].close()
    results = two_migrators_at_once(gamma)
    assert sorted(r.status for r in results) == [MIGRATED, UP_TO_DATE], results
    with tenant_context(gamma):
        assert Note.objects.count() == 1
        with connections[alias_for(gamma)].cursor() as cursor:
            cursor.execute("SELECT count(*) FROM django_migrations WHERE name = '0003_welcome'")
            assert cursor.fetchone()[0] == 1


def test_a_plan_is_never_kept_for_a_set_the_database_no_longer_has(fleet, migrations, monkeypatch):
    """Another migrator applies a migration between tenancy's read of a database's rows
    and the plan's: the plan is not kept under the older set, and the next tenant with
    that set is migrated in full."""
    from tenancy import migration

    migrations("tests.migrations_extra")
    state = migration.MigrationState()
    gamma, omega = fleet[1], fleet[2]
    build = migration.MigrationExecutor.__init__
    stepped_in = []

    def meanwhile(self, connection, *args, **kwargs):
        if not stepped_in:
            stepped_in.append(True)
            with tenant_context(gamma):
                call_command(
                    "migrate",
                    "tenantapp",
                    "0003",
                    database=alias_for(gamma),
                    verbosity=0,
                    stdout=io.StringIO(),
                )
        build(self, connection, *args, **kwargs)

    monkeypatch.setattr(migration.MigrationExecutor, "__init__", meanwhile)
    state.prepare(gamma)
    assert stepped_in
    assert state._plans == {}
    monkeypatch.setattr(migration.MigrationExecutor, "__init__", build)
    result = migrate_tenant(omega, state=state)
    assert (result.status, result.applied) == (MIGRATED, 2)
    with tenant_context(omega):
        assert list(Note.objects.values_list("text", flat=True)) == ["welcome"]
    assert migrate_tenant(gamma, state=state).status == MIGRATED


def test_a_squashed_migration_added_after_its_originals_were_applied(fleet, migrations):
    """A squash of migrations every tenant has applied, and a migration after it: the
    loader counts the squash applied though no row says so, and tenants migrate."""
    from tenancy.migration import MigrationState

    migrations("tests.migrations_squash")
    state = MigrationState()
    results = [migrate_tenant(tenant, state=state) for tenant in fleet[1:]]
    assert [(result.status, result.applied) for result in results] == [(MIGRATED, 1)] * 2


def test_what_pre_migrate_adds_to_a_shared_plan_runs_once_per_database(fleet, migrations):
    """A pre_migrate receiver that adds an operation to the plan's migrations (as
    contenttypes' does after each RenameModel) adds it for each database: the shared
    migrations keep one copy, and each database runs it once."""
    from importlib import import_module

    from django.apps import apps as django_apps
    from django.db import migrations as operations
    from django.db.models.signals import pre_migrate

    from tenancy.migration import MigrationState

    migrations("tests.migrations_v2")
    state = MigrationState()
    original = import_module("tests.migrations_v2.0002_note_text_index").Migration
    ran = []

    def note(apps, schema_editor):
        ran.append(schema_editor.connection.alias)

    def add(plan=None, **kwargs):
        for migration, _backwards in plan or []:
            migration.operations.insert(0, operations.RunPython(note))

    pre_migrate.connect(add, sender=django_apps.get_app_config("tenantapp"))
    try:
        for tenant in fleet:
            assert migrate_tenant(tenant, state=state).status == MIGRATED
    finally:
        pre_migrate.disconnect(add, sender=django_apps.get_app_config("tenantapp"))
    (plan,) = state._plans.values()
    [(migration, _backwards)] = plan.plan
    assert [type(operation).__name__ for operation in migration.operations] == [
        "RunPython",  # the one added, once
        *(type(operation).__name__ for operation in original.operations),
    ]
    assert ran == [alias_for(tenant) for tenant in fleet]


def test_what_tenants_share_is_worked_out_once_before_workers_fork(fleet, migrations):
    """``MigrationState.prepare``: the plan and its history check, so that the tenants
    migrated next (in workers forked after it) load and render no graph of their own."""
    from django.db.migrations.loader import MigrationLoader

    from tenancy.migration import MigrationState, applied_migrations

    migrations("tests.migrations_v2")
    state = MigrationState()
    gamma, omega = fleet[1], fleet[2]
    state.prepare(gamma)
    (plan,) = state._plans.values()
    assert plan.checked
    assert "apps" in plan.state.__dict__  # rendered
    assert state.pending(applied_migrations(connections[alias_for(gamma)]))  # not migrated
    loads = []
    build_graph = MigrationLoader.build_graph

    def counting(self):
        loads.append(self)
        return build_graph(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MigrationLoader, "build_graph", counting)
        results = [migrate_tenant(tenant, state=state) for tenant in (gamma, omega)]
    assert loads == []
    assert [result.status for result in results] == [MIGRATED, MIGRATED]
    for tenant in (gamma, omega):
        with tenant_context(tenant):
            assert Note.objects.count() == 1


def test_skip_locked_skips_a_database_being_migrated(fleet, migrations):
    migrations("tests.migrations_v2")
    gamma = fleet[1]
    holder = connections[alias_for(gamma)]
    results = []
    with migration_lock(holder) as acquired:
        assert acquired

        def migrate():
            results.append(migrate_tenant(gamma, wait_for_lock=False))
            connections.close_all()

        thread = threading.Thread(target=migrate)
        thread.start()
        thread.join(timeout=60)
    assert [r.status for r in results] == [LOCKED]
    assert migrate_tenant(gamma).status == MIGRATED


def test_migration_graph_is_loaded_once_not_per_tenant(fleet, migrations, monkeypatch):
    from django.db.migrations.loader import MigrationLoader

    migrations("tests.migrations_v2")
    loads = []
    build_graph = MigrationLoader.build_graph

    def counting_build_graph(self):
        loads.append(self.connection.alias if self.connection else None)
        return build_graph(self)

    monkeypatch.setattr(MigrationLoader, "build_graph", counting_build_graph)
    lines, error = run()
    assert error is None
    assert lines[-1].startswith("3 tenant(s): 3 migrated")
    # Django's migrate of the main database loads it once, the command's graph once,
    # and one plan shared by the three tenants (their applied migrations are the same).
    tenant_loads = [alias for alias in loads if alias not in (None, "default")]
    assert len(tenant_loads) == 1
    assert len(loads) == 3


class Died(Exception):
    """Stands in for the process dying at that point."""


def test_a_migrator_dying_between_a_migration_and_its_record_leaves_the_tenant_as_it_was(
    fleet, monkeypatch
):
    # tenantapp's 0001 has deferred SQL (the foreign key's index and constraint): Django
    # alone commits it before recording it, and a run dying in between leaves the tables
    # without the record, so every later run fails on "table already exists".
    tenant = fleet[1]
    with tenant_context(tenant):
        call_command("migrate", "tenantapp", "zero", database=alias_for(tenant), verbosity=0)
    connection = connections[alias_for(tenant)]
    assert "tenantapp_note" not in connection.introspection.table_names()
    record_applied = MigrationRecorder.record_applied

    def dies_instead_of_recording(self, app, name):
        if (app, name) == ("tenantapp", "0001_initial"):
            raise Died
        record_applied(self, app, name)

    monkeypatch.setattr(MigrationRecorder, "record_applied", dies_instead_of_recording)
    assert migrate_tenant(tenant).error == "Died"
    assert "tenantapp_note" not in connection.introspection.table_names()
    connection.close()

    monkeypatch.undo()
    assert migrate_tenant(tenant).status == MIGRATED
    with tenant_context(tenant):
        assert Note.objects.count() == 0


def test_a_plan_with_a_non_atomic_migration_runs_outside_a_transaction(fleet, migrations):
    migrations("tests.migrations_nonatomic")
    result = migrate_tenant(fleet[0])
    assert (result.status, result.applied, result.error) == (MIGRATED, 1, "")


def test_list_reports_tenants_whose_database_cannot_be_read(fleet, settings):
    down = (
        {**SERVER_1, "PORT": "1"}
        if BACKEND == "postgresql"
        else {**SERVER_1, "DIRECTORY": "/dev/null/x"}
    )
    settings.TENANCY = {
        **settings.TENANCY,
        "SERVERS": {**settings.TENANCY["SERVERS"], "down": down},
    }
    Tenant.objects.create(slug="lost", name="Lost", server="down", status=TenantStatus.ACTIVE)
    lines, error = run("--list")
    rows = {line.split()[1]: line for line in tenant_lines(lines)}
    assert "FAILED: OperationalError" in rows["lost"]
    assert "applied" not in rows["lost"]  # not "30 applied, 0 unapplied"
    assert "0 unapplied" in rows["gamma"]
    assert "1 tenant(s) failed: lost" in str(error)


def test_applying_and_ok_share_a_line_as_in_django(fleet, migrations):
    migrations("tests.migrations_shared_v2", app="sharedapp")
    try:
        lines, error = run()
    finally:
        MigrationRecorder(connections["default"]).migration_qs.filter(
            app="sharedapp", name="0002_noop"
        ).delete()
    assert error is None
    assert [line for line in lines if "Applying" in line] == [
        "  Applying sharedapp.0002_noop... OK"
    ]
    assert not any("migrate_tenants`" in line for line in lines)  # migrate's own line


@contextmanager
def main_database_at(**changes):
    """The main database's connection, with these settings changed, meanwhile. The
    test's own connection is set aside, not closed (SQLite's in-memory test database
    would be gone)."""
    connection = connections["default"]
    settings, raw = connection.settings_dict, connection.connection
    connection.connection = None
    connection.settings_dict = {**settings, **changes}
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict, connection.connection = settings, raw


def test_a_missing_main_database_is_one_line(db_access, tmp_path):
    if BACKEND == "postgresql":
        name, shown = "test_tenancy_no_main_database", "'test_tenancy_no_main_database' on server"
    else:
        name = str(tmp_path / "missing" / "main.sqlite3")
        shown = f"{name!r} (SQLite)"
    with main_database_at(NAME=name):
        for args in ((), ("--list",), ("--check",)):
            lines, error = run(*args)
            assert str(error).startswith(f"The main database {shown}"), args
            assert "Create it (or fix DATABASES['default'])" in str(error)
            assert "\n" not in str(error)
            assert lines == []


def test_checking_a_main_database_without_tables_is_one_line(alpha):
    tenant_database = connections[alias_for(alpha)].settings_dict  # has no tenancy tables
    keys = ("NAME", "HOST", "PORT", "USER", "PASSWORD", "OPTIONS")
    with main_database_at(**{key: tenant_database[key] for key in keys}):
        for args in (("--list",), ("--check",), ("--plan", "--json")):
            _, error = run(*args)
            assert "has no tenant table (tenancy_tenant) yet" in str(error), args
            assert "run `manage.py migrate_tenants` to create it" in str(error)


def test_migrate_of_the_main_database_names_migrate_tenants(alpha):
    import io

    out = io.StringIO()
    call_command("migrate", verbosity=1, stdout=out, no_color=True)
    assert out.getvalue().splitlines()[-1] == (
        "Tenant databases are migrated by `manage.py migrate_tenants` (1 tenant(s))."
    )
    out = io.StringIO()
    with tenant_context(alpha):  # a tenant's database: Django's output only
        call_command("migrate", database=alias_for(alpha), verbosity=1, stdout=out)
    assert "migrate_tenants" not in out.getvalue()
    assert "No migrations to apply." in out.getvalue()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_one_live_line_and_only_the_tenants_that_need_a_look(fleet, migrations):
    migrations("tests.migrations_failing")  # beta-two fails, gamma and omega migrate
    out = Terminal()
    with pytest.raises(CommandError):
        call_command("migrate_tenants", stdout=out, no_color=True)
    text = out.getvalue()
    assert "\r[3/3] 1 failed, about 0s left" in text
    lines = [line.split("\r")[-1] for line in text.splitlines()]
    assert any("beta-two  FAILED" in line for line in lines)
    assert not any("gamma  1 applied" in line for line in lines)
    out = Terminal()
    with pytest.raises(CommandError):
        call_command("migrate_tenants", "--verbosity", "2", stdout=out, no_color=True)
    assert "\r" not in out.getvalue()  # -v 2: a line per tenant instead
    assert "gamma  up to date" in out.getvalue()
