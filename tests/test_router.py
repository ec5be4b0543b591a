"""TenantRouter: tenant apps to the current tenant, shared apps to default, fail closed."""

import threading

import pytest
from django.db import connections, router

from tenancy import CrossTenantError, NoTenantError, tenant_connection, tenant_context
from tenancy.connections import alias_for
from tenancy.routers import TenantRouter
from tests.sharedapp.models import Plan
from tests.tenantapp.models import Note, Tag


@pytest.mark.parametrize(
    "operation",
    [
        lambda: list(Note.objects.all()),
        lambda: Note.objects.count(),
        lambda: Note.objects.create(text="x"),
        lambda: Note(text="x").save(),
        lambda: Note.objects.filter(text="x").update(text="y"),
        lambda: Note.objects.bulk_create([Note(text="x")]),
        lambda: Tag.objects.filter(note__text="x").exists(),
    ],
    ids=["iterate", "count", "create", "save", "update", "bulk_create", "join"],
)
def test_query_without_tenant_raises(db_access, operation):
    with pytest.raises(NoTenantError, match=r"tenantapp\.(Note|Tag) is stored in tenant"):
        operation()


def test_no_tenant_error_says_how_to_set_one(db_access):
    with pytest.raises(NoTenantError, match=r"tenant_context\(tenant\)"):
        Note.objects.count()


def test_raw_connection_without_tenant_raises(db_access):
    with pytest.raises(NoTenantError):
        tenant_connection()


def test_query_without_tenant_writes_nothing_anywhere(alpha):
    with pytest.raises(NoTenantError):
        Note.objects.create(text="lost")
    with tenant_context(alpha):
        assert Note.objects.count() == 0
    assert Note._meta.db_table not in connections["default"].introspection.table_names()


def test_plain_thread_starts_without_tenant(alpha):
    errors = []

    def work():
        try:
            Note.objects.count()
        except NoTenantError as exc:
            errors.append(exc)

    with tenant_context(alpha):
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
    assert len(errors) == 1


def test_shared_models_use_default_inside_a_tenant(alpha):
    with tenant_context(alpha):
        Plan.objects.create(name="pro")
        assert router.db_for_read(Plan) == "default"
        assert router.db_for_write(Plan) == "default"
    assert Plan.objects.using("default").count() == 1


def test_shared_model_reached_from_tenant_instance_uses_default(alpha):
    with tenant_context(alpha):
        note = Note.objects.create(text="x")
        assert router.db_for_read(Plan, instance=note) == "default"


def test_tenant_models_use_the_current_tenant(alpha, beta):
    with tenant_context(alpha):
        assert router.db_for_read(Note) == alias_for(alpha)
        with tenant_context(beta):
            assert router.db_for_write(Note) == alias_for(beta)


def test_object_of_one_tenant_cannot_be_saved_in_another(alpha, beta):
    with tenant_context(alpha):
        note = Note.objects.create(text="alpha's")
    with tenant_context(beta), pytest.raises(CrossTenantError, match="'beta' is active"):
        note.save()
    with tenant_context(beta):
        assert Note.objects.count() == 0


def test_relations_between_tenants_are_refused(alpha, beta):
    with tenant_context(alpha):
        note = Note.objects.create(text="alpha's")
    with tenant_context(beta):
        tag = Tag(label="t")
        tag._state.db = alias_for(beta)
        with pytest.raises(ValueError, match="router prevents this relation"):
            tag.note = note


def test_relations_between_tenant_and_shared_objects_are_refused(alpha):
    with tenant_context(alpha):
        note = Note.objects.create(text="x")
    plan = Plan.objects.create(name="pro")
    assert TenantRouter().allow_relation(note, plan) is False
    assert TenantRouter().allow_relation(plan, note) is False


def test_relations_within_one_tenant_are_allowed(alpha):
    with tenant_context(alpha):
        note = Note.objects.create(text="x")
        Tag.objects.create(note=note, label="t")
        assert list(note.tags.values_list("label", flat=True)) == ["t"]


def test_allow_migrate_keeps_apps_on_their_side(alpha):
    tenant_alias = alias_for(alpha)
    assert router.allow_migrate(tenant_alias, "tenantapp") is True
    assert router.allow_migrate(tenant_alias, "sharedapp") is False
    assert router.allow_migrate(tenant_alias, "auth") is False
    assert router.allow_migrate(tenant_alias, "tenancy") is False
    assert router.allow_migrate("default", "tenantapp") is False
    assert router.allow_migrate("default", "sharedapp") is True


def test_migrated_tenant_database_holds_only_tenant_tables(alpha):
    with tenant_context(alpha):
        tables = set(tenant_connection().introspection.table_names())
    tenant_tables = {
        "tenantapp_note",
        "tenantapp_tag",
        "tenantapp_label",
        "tenantapp_label_notes",
        "tenantapp_attachment",
    }
    assert tables == tenant_tables | {"django_migrations"}
    default_tables = set(connections["default"].introspection.table_names())
    assert {"tenancy_tenant", "auth_user", "sharedapp_plan"} <= default_tables
    assert not tenant_tables & default_tables
