"""The tenant admin: provisioning from the add form, actions, the typed-slug deletion."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from tenancy import tenant_context
from tenancy.backends import get_server
from tenancy.connections import registered_aliases
from tenancy.models import Domain, Membership, Tenant, TenantStatus
from tenancy.signals import tenant_provisioned
from tests.tenantapp.models import Note

ADMIN = "admin.example.test"
CHANGELIST = "/admin/tenancy/tenant/"


@pytest.fixture
def users(db_access: None) -> Iterator[None]:
    yield
    User.objects.all().delete()


def client_for(*permissions: str, superuser: bool = False) -> Client:
    user = User.objects.create_user(
        f"user{User.objects.count()}", is_staff=True, is_superuser=superuser
    )
    user.user_permissions.set(Permission.objects.filter(codename__in=permissions))
    client = Client(HTTP_HOST=ADMIN)
    client.force_login(user)
    return client


@pytest.fixture
def superuser(users: None) -> Client:
    return client_for(superuser=True)


def texts(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def add_form(slug: str, **fields: str) -> dict[str, str]:
    return {
        "slug": slug,
        "name": slug.title(),
        "server": "one",
        "database_name": "",
        "domains-TOTAL_FORMS": "1",
        "domains-INITIAL_FORMS": "0",
        "domains-0-domain": f"{slug}.example.test",
        "domains-0-is_primary": "on",
        "memberships-TOTAL_FORMS": "0",
        "memberships-INITIAL_FORMS": "0",
        **fields,
    }


def act(client: Client, action: str, *tenants: Tenant, **extra: str):
    data = {"action": action, "_selected_action": [str(t.pk) for t in tenants], **extra}
    return client.post(CHANGELIST, data, follow=True)


def test_list_shows_status_domain_and_migrations(superuser, alpha, beta):
    response = superuser.get(CHANGELIST)
    assert response.status_code == 200
    body = response.content.decode()
    for tenant in (alpha, beta):
        assert f"{tenant.slug}.example.test" in body
        assert tenant.database_name in body
    # Saved by hand, never read by tenancy: the ledger does not call them current.
    assert body.count("not read yet") == 2
    assert "up to date" not in body
    assert "Active" in body or "active" in body
    assert "delete_selected_tenants" in body
    assert '"delete_selected"' not in body  # Django's, which would leave the databases


def test_the_list_reads_the_ledger_not_the_tenant_databases(superuser, alpha, beta):
    page = superuser.get(CHANGELIST).content.decode()
    assert "2 tenant(s): 0 current, 0 behind, 0 failed, 2 never read." in page
    response = act(superuser, "verify_migrations", alpha, beta)
    assert "Read from the databases: 2 up-to-date." in texts(response)
    page = superuser.get(CHANGELIST).content.decode()
    assert page.count("up to date") == 2
    assert "2 tenant(s): 2 current, 0 behind, 0 failed, 0 never read." in page

    # The same queries for a page of 2 tenants and of 12, none in a tenant database.
    def list_queries() -> list[str]:
        with CaptureQueriesContext(connection) as captured:
            assert superuser.get(CHANGELIST).status_code == 200
        return [query["sql"] for query in captured.captured_queries]

    registered = set(registered_aliases())
    two = list_queries()
    for number in range(10):
        _saved_more(f"extra-{number}")
    assert len(list_queries()) == len(two)
    assert set(registered_aliases()) == registered  # no tenant database was opened


def _saved_more(slug: str) -> None:
    Tenant.objects.create(slug=slug, name=slug, server="one", status=TenantStatus.ACTIVE)


def test_adding_a_tenant_provisions_it(superuser):
    response = superuser.post(f"{CHANGELIST}add/", add_form("gamma"), follow=True)
    assert "Tenant gamma is active." in texts(response)
    gamma = Tenant.objects.get(slug="gamma")
    assert gamma.status == TenantStatus.ACTIVE
    assert get_server("one").database_exists(gamma.database_name)
    assert Domain.objects.get(tenant=gamma).domain == "gamma.example.test"
    page = superuser.get(CHANGELIST).content.decode()
    assert page.count("up to date") == 1


def test_failed_provisioning_is_shown_and_can_be_retried(superuser):
    def broken_seed(sender, tenant, **kwargs):
        raise RuntimeError("seed data unavailable")

    tenant_provisioned.connect(broken_seed)
    try:
        response = superuser.post(f"{CHANGELIST}add/", add_form("gamma"), follow=True)
    finally:
        tenant_provisioned.disconnect(broken_seed)
    [message] = texts(response)  # not Django's "added successfully"
    assert "Provisioning tenant 'gamma' failed (RuntimeError: seed data unavailable)" in message
    gamma = Tenant.objects.get(slug="gamma")
    assert gamma.status == TenantStatus.FAILED
    assert "seed data unavailable" in superuser.get(CHANGELIST).content.decode()
    response = act(superuser, "retry_provisioning", gamma)
    assert texts(response) == ["Tenant gamma is active."]
    gamma.refresh_from_db()
    assert gamma.status == TenantStatus.ACTIVE


def test_suspend_activate_and_migrate(superuser, alpha, beta):
    response = act(superuser, "suspend_selected", alpha)
    assert texts(response) == ["Tenant alpha: suspended."]
    assert Tenant.objects.get(pk=alpha.pk).status == TenantStatus.SUSPENDED
    response = act(superuser, "activate_selected", alpha, beta)
    assert texts(response) == [
        "Tenant alpha: active.",
        "Tenant beta: left active; only suspended tenants move.",
    ]
    response = act(superuser, "migrate_selected", alpha, beta)
    assert texts(response) == ["Tenant alpha: up-to-date.", "Tenant beta: up-to-date."]


def test_action_messages_keep_the_slug_as_typed(superuser, alpha):
    # The admin renders each message with capfirst: a message that began with the slug
    # showed "Alpha: suspended." for the tenant alpha.
    body = act(superuser, "suspend_selected", alpha).content.decode()
    assert "Tenant alpha: suspended." in body
    assert "Alpha: suspended." not in body


def change_form(tenant: Tenant, **fields: str) -> dict[str, str]:
    """The change form of ``tenant`` as the admin renders it, with ``fields`` changed."""
    [domain] = Domain.objects.filter(tenant=tenant)
    return {
        "name": tenant.name,
        "domains-TOTAL_FORMS": "1",
        "domains-INITIAL_FORMS": "1",
        "domains-0-id": str(domain.pk),
        "domains-0-tenant": str(tenant.pk),
        "domains-0-domain": domain.domain,
        "domains-0-is_primary": "on",
        "memberships-TOTAL_FORMS": "0",
        "memberships-INITIAL_FORMS": "0",
        **fields,
    }


def test_change_page_edits_name_and_domains(superuser, alpha):
    url = f"{CHANGELIST}{alpha.pk}/change/"
    page = superuser.get(url)
    assert page.status_code == 200
    body = page.content.decode()
    assert "alpha.example.test" in body
    assert f'href="{CHANGELIST}{alpha.pk}/delete/"' in body
    data = change_form(alpha, name="Alpha Ltd", **{"domains-0-domain": "alpha-ltd.example.test"})
    response = superuser.post(url, data, follow=True)
    assert response.status_code == 200
    assert response.redirect_chain[-1][0] == CHANGELIST
    alpha.refresh_from_db()
    assert alpha.name == "Alpha Ltd"
    assert alpha.server == "one"  # read-only, kept
    assert [d.domain for d in Domain.objects.filter(tenant=alpha)] == ["alpha-ltd.example.test"]
    assert "alpha-ltd.example.test" in superuser.get(CHANGELIST).content.decode()


def test_change_page_refuses_a_main_site_host_as_domain(superuser, alpha):
    url = f"{CHANGELIST}{alpha.pk}/change/"
    response = superuser.post(url, change_form(alpha, **{"domains-0-domain": ADMIN}))
    assert response.status_code == 200  # the form again, with the error
    assert "is a host of the main site" in response.content.decode()
    assert Domain.objects.get(tenant=alpha).domain == "alpha.example.test"


def test_deleting_needs_each_slug_typed(superuser, alpha, beta):
    page = act(superuser, "delete_selected_tenants", alpha, beta)
    assert page.status_code == 200
    assert "Type alpha to confirm" in page.content.decode()
    wrong = act(
        superuser,
        "delete_selected_tenants",
        alpha,
        beta,
        confirm="yes",
        **{f"slug_{alpha.pk}": "alpha", f"slug_{beta.pk}": "alhpa"},
    )
    assert "This is not the tenant&#x27;s slug." in wrong.content.decode()
    assert Tenant.objects.count() == 2
    done = act(
        superuser,
        "delete_selected_tenants",
        alpha,
        beta,
        confirm="yes",
        keep_database="on",
        **{f"slug_{alpha.pk}": "alpha", f"slug_{beta.pk}": "beta"},
    )
    assert texts(done) == [
        "Tenant alpha: deleted (database kept).",
        "Tenant beta: deleted (database kept).",
    ]
    assert not Tenant.objects.exists()
    assert get_server("one").database_exists(alpha.database_name)


def test_delete_button_of_one_tenant_drops_its_database(superuser, users):
    superuser.post(f"{CHANGELIST}add/", add_form("gamma"))
    gamma = Tenant.objects.get(slug="gamma")
    url = f"{CHANGELIST}{gamma.pk}/delete/"
    assert "Type gamma to confirm" in superuser.get(url).content.decode()
    response = superuser.post(url, {"confirm": "yes", f"slug_{gamma.pk}": "gamma"}, follow=True)
    assert texts(response) == ["Tenant gamma: deleted."]
    assert not get_server("one").database_exists(gamma.database_name)


def test_moving_asks_for_the_server_then_moves_every_row(superuser):
    superuser.post(f"{CHANGELIST}add/", add_form("gamma"))
    gamma = Tenant.objects.get(slug="gamma")
    with tenant_context(gamma):
        Note.objects.create(text="gamma's")
    page = act(superuser, "move_selected_tenants", gamma)
    assert 'name="server"' in page.content.decode()
    assert Tenant.objects.get(slug="gamma").server == "one"  # nothing before confirming
    done = act(superuser, "move_selected_tenants", gamma, confirm="yes", server="two")
    [message] = texts(done)
    assert message.startswith("Tenant gamma: moved to server two in ")
    gamma.refresh_from_db()
    assert (gamma.server, gamma.status) == ("two", TenantStatus.ACTIVE)
    assert not get_server("one").database_exists(gamma.database_name)
    with tenant_context(gamma):
        assert list(Note.objects.values_list("text", flat=True)) == ["gamma's"]
    refused = act(superuser, "move_selected_tenants", gamma, confirm="yes", server="two")
    assert texts(refused) == ["Tenant 'gamma' is on server 'two' already."]


def test_database_changes_need_the_provision_permission(users, alpha):
    viewer = client_for("view_tenant", "change_tenant", "add_tenant", "delete_tenant")
    page = viewer.get(CHANGELIST).content.decode()
    assert "suspend_selected" in page
    for action in (
        "migrate_selected",
        "retry_provisioning",
        "move_selected_tenants",
        "delete_selected_tenants",
    ):
        assert action not in page
    assert viewer.get(f"{CHANGELIST}add/").status_code == 403
    assert viewer.get(f"{CHANGELIST}{alpha.pk}/delete/").status_code == 403
    operator = client_for("view_tenant", "change_tenant", "provision_tenant")
    page = operator.get(CHANGELIST).content.decode()
    assert "migrate_selected" in page
    assert "delete_selected_tenants" not in page


NOTES = "/manage/tenantapp/note/"


def member(tenant: Tenant, *, is_admin: bool) -> Client:
    client = client_for(superuser=True)  # platform permissions do not count here
    user = User.objects.order_by("-pk").first()
    Membership.objects.create(user=user, tenant=tenant, is_admin=is_admin)
    with tenant_context(tenant):  # signed in on the tenant's own site
        client.force_login(user)
    return client


def test_tenant_admin_shows_only_its_tenants_data_to_its_admins(users, notes):
    alpha, _ = notes
    client = member(alpha, is_admin=True)
    response = client.get(NOTES, HTTP_HOST="alpha.example.test")
    assert response.status_code == 200
    body = response.content.decode()
    assert "alpha note" in body
    assert "beta note" not in body
    assert "Tenant administration: Alpha" in body
    # The same user on another tenant's domain is sent to log in there.
    assert client.get(NOTES, HTTP_HOST="beta.example.test").status_code == 302


def test_tenant_admin_refuses_non_admins_and_the_main_site(users, notes):
    alpha, _ = notes
    plain_member = member(alpha, is_admin=False)
    assert plain_member.get(NOTES, HTTP_HOST="alpha.example.test").status_code == 302
    outsider = client_for(superuser=True)
    with tenant_context(alpha):
        outsider.force_login(User.objects.order_by("-pk").first())
    assert outsider.get(NOTES, HTTP_HOST="alpha.example.test").status_code == 302
    admin = member(alpha, is_admin=True)
    assert admin.get(NOTES, HTTP_HOST=ADMIN).status_code == 404
    assert admin.get("/manage/login/", HTTP_HOST=ADMIN).status_code == 404


def test_tenant_models_belong_on_a_tenant_admin_site(db_access):
    from django.contrib.admin import AdminSite

    import tests.urls  # noqa: F401  (the sites the URLs use)
    from tenancy.checks import check_admin_sites

    assert check_admin_sites() == []
    wrong = AdminSite(name="wrong")
    wrong.register(Note)
    errors = check_admin_sites()
    assert [(error.id, error.obj) for error in errors] == [("tenancy.E007", wrong)]
    assert "tenantapp.Note is stored in tenant databases" in errors[0].msg
