"""Django's admin log on tenant admin sites: objects of different tenants share primary
keys, and each tenant's history pages and "Recent actions" show only its own entries."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import User
from django.test import Client
from django.urls import path

from tenancy.admin import TenantAdminSite, TenantModelAdmin
from tenancy.checks import check_admin_sites
from tenancy.context import tenant_context
from tenancy.models import Membership, Tenant, TenantLogEntry
from tenancy.provisioning import deprovision_tenant
from tenancy.testing.client import TenantClient
from tests.tenantapp.models import Note, Tag

MAIN = "admin.example.test"
PK = 1  # the primary key of a note in alpha and of another in beta


class TagInline(admin.TabularInline):  # type: ignore[type-arg]
    model = Tag
    extra = 0


class NoteAdmin(TenantModelAdmin):
    inlines = [TagInline]


log_admin = TenantAdminSite(name="log_admin")
log_admin.register(Note, NoteAdmin)
log_admin.register(Tag)  # a plain ModelAdmin: the site records its entries' tenant too

urlpatterns = [path("admin/", admin.site.urls), path("manage/", log_admin.urls)]

pytestmark = pytest.mark.urls(__name__)


@pytest.fixture
def operator(db_access: None, alpha: Tenant, beta: Tenant) -> Iterator[User]:
    """A main-site superuser who is an admin member of alpha and of beta."""
    user = User.objects.create_user("operator", is_staff=True, is_superuser=True)
    for tenant in (alpha, beta):
        Membership.objects.create(user=user, tenant=tenant, is_admin=True)
    yield user
    User.objects.all().delete()


def logged_in(client: Client, user: User, tenant: Tenant | None = None) -> Client:
    """``client`` signed in as ``user`` on ``tenant``'s site (``None``: the main site)."""
    with tenant_context(tenant):  # a sign-in belongs to the site it is made on
        client.force_login(user)
    return client


def change_note(client: Client, text: str, *tags: str) -> None:
    data = {
        "text": text,
        "author_id": "7",
        "tags-TOTAL_FORMS": str(len(tags)),
        "tags-INITIAL_FORMS": "0",
        **{f"tags-{number}-label": label for number, label in enumerate(tags)},
    }
    response = client.post(f"/manage/tenantapp/note/{PK}/change/", data)
    assert response.status_code == 302, response.context["errors"]


@pytest.fixture
def changed(operator: User, alpha: Tenant, beta: Tenant) -> tuple[Client, Client]:
    """Note PK of alpha and note PK of beta, each changed in its tenant's admin; beta's
    change adds the tag "beta-only-tag"."""
    for tenant in (alpha, beta):
        with tenant_context(tenant):
            Note.objects.create(pk=PK, text=f"{tenant.slug} note")
    alpha_admin = logged_in(TenantClient(alpha), operator, alpha)
    beta_admin = logged_in(TenantClient(beta), operator, beta)
    change_note(alpha_admin, "alpha revised")
    change_note(beta_admin, "beta revised", "beta-only-tag")
    return alpha_admin, beta_admin


def recent_actions(client: Client, url: str) -> str:
    body = client.get(url).content.decode()
    return body[body.index('id="recent-actions-module"') :]


def test_history_shows_only_the_tenants_own_entries(changed):
    alpha_admin, beta_admin = changed
    history = alpha_admin.get(f"/manage/tenantapp/note/{PK}/history/").content.decode()
    assert "beta-only-tag" not in history  # str() of beta's inline object
    assert "Changed Text and Author id." in history
    assert "1 entry" in history
    beta_history = beta_admin.get(f"/manage/tenantapp/note/{PK}/history/").content.decode()
    assert "Added tag “beta-only-tag”." in beta_history
    assert "1 entry" in beta_history


def test_recent_actions_show_only_the_tenants_own_entries(changed, operator, beta):
    alpha_admin, beta_admin = changed
    # A change on the main admin: an entry of no tenant, linked to the main admin.
    membership = Membership.objects.get(user=operator, tenant=beta)
    main = logged_in(Client(HTTP_HOST=MAIN), operator)
    response = main.post(
        f"/admin/tenancy/membership/{membership.pk}/change/",
        {"user": operator.pk, "tenant": beta.pk, "is_admin": "on"},
    )
    assert response.status_code == 302
    main_link = f'href="/admin/tenancy/membership/{membership.pk}/change/"'
    assert main_link in recent_actions(main, "/admin/")

    alpha_actions = recent_actions(alpha_admin, "/manage/")
    assert main_link not in alpha_actions
    assert "beta revised" not in alpha_actions
    assert "alpha revised" in alpha_actions
    beta_actions = recent_actions(beta_admin, "/manage/")
    assert "beta revised" in beta_actions
    assert "alpha revised" not in beta_actions


def test_entries_of_a_plain_model_admin_record_their_tenant(changed, beta):
    alpha_admin, beta_admin = changed
    with tenant_context(beta):
        tag = Tag.objects.get(label="beta-only-tag")
    response = beta_admin.post(f"/manage/tenantapp/tag/{tag.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert "beta-only-tag" in recent_actions(beta_admin, "/manage/")
    assert "beta-only-tag" not in recent_actions(alpha_admin, "/manage/")


def test_main_admin_shows_tenant_entries_unlinked(changed, operator):
    """Django links an entry to the change page of the admin site named "admin", which
    cannot register tenant models (tenancy.E007): tenant entries stay plain text there."""
    main = logged_in(Client(HTTP_HOST=MAIN), operator)
    actions = recent_actions(main, "/admin/")
    assert "alpha revised" in actions
    assert "tenantapp/note/" not in actions


def test_deleting_a_tenant_deletes_its_log_entries(changed, alpha, beta):
    alpha_entries = LogEntry.objects.filter(object_repr="alpha revised")
    assert alpha_entries.exists()
    deprovision_tenant(alpha, keep_database=True)  # the session's alpha database stays
    assert not alpha_entries.exists()
    assert LogEntry.objects.filter(object_repr="beta revised").exists()
    assert list(TenantLogEntry.objects.values_list("tenant_id", flat=True)) == [beta.pk]


def test_shared_models_do_not_belong_on_a_tenant_admin_site(db_access):
    assert admin.site.is_registered(Membership)  # the main admin's: no error
    site = TenantAdminSite(name="shared_on_tenant")
    site.register(Note, TenantModelAdmin)
    assert [error for error in check_admin_sites() if error.obj is site] == []
    site.register(Membership)
    try:
        errors = [error for error in check_admin_sites() if error.id == "tenancy.E008"]
    finally:
        site.unregister(Membership)  # the site outlives the test in admin's all_sites
    assert [(error.obj, error.id) for error in errors] == [(site, "tenancy.E008")]
    assert "tenancy.Membership is stored in the main database" in errors[0].msg
    assert "TENANT_APPS" in errors[0].hint


def test_a_log_in_each_tenant_database_needs_no_recording(alpha, settings):
    """With django.contrib.admin a tenant app, each tenant's database has its own log."""
    from tenancy.admin_log import record_tenant, tenant_log_entries

    settings.TENANCY = {**settings.TENANCY, "TENANT_APPS": ["tests.tenantapp", "admin"]}
    assert "tenancy_tenantlogentry" not in str(tenant_log_entries(alpha).query)
    record_tenant(alpha, [LogEntry(pk=1)])
    assert not TenantLogEntry.objects.exists()
