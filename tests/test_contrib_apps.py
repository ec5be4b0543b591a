"""Django's contrib apps per tenant: flatpages, redirects and sites, as a project sets them up."""

import textwrap

import pytest
from django.contrib import admin
from django.contrib.auth.models import AnonymousUser, Permission
from django.contrib.contenttypes.models import ContentType
from django.test import RequestFactory

from tenancy import CrossTenantError, tenant_context
from tenancy.admin import TenantAdminSite, TenantLogMixin
from tenancy.checks import check_admin_sites, check_relations, check_settings
from tenancy.routers import TenantRouter
from tests.generated_project import manager, run_manage
from tests.tenantapp.models import Label, Note

SETTINGS = """
SECRET_KEY = "tests-only"
USE_TZ = True
DEBUG = False
ALLOWED_HOSTS = ["localhost", ".localhost"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "contrib_urls"
SITE_ID = 1
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.sites",
    "django.contrib.flatpages",
    "django.contrib.redirects",
    "tenancy",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "tenancy.middleware.TenantMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.contrib.flatpages.middleware.FlatpageFallbackMiddleware",
    "django.contrib.redirects.middleware.RedirectFallbackMiddleware",
]
TEMPLATES = [{{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": ["{data}/templates"],
    "APP_DIRS": True,
    "OPTIONS": {{"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]}},
}}]
SQLITE = "django.db.backends.sqlite3"
DATABASES = {{"default": {{"ENGINE": SQLITE, "NAME": "{data}/main.sqlite3"}}}}
DATABASE_ROUTERS = ["tenancy.routers.TenantRouter"]
STORAGES = {{
    "default": {{"BACKEND": "tenancy.storage.TenantFileSystemStorage"}},
    "staticfiles": {{"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}},
}}
MEDIA_ROOT = "{data}/media"
MEDIA_URL = "/media/"
TENANCY = {{
    "TENANT_APPS": ["django.contrib.flatpages", "django.contrib.redirects"],
    "SHARED_AND_TENANT_APPS": ["django.contrib.sites"],
    "SERVERS": {{
        "one": {{"ENGINE": SQLITE, "DIRECTORY": "{data}/one"}},
        "two": {{"ENGINE": SQLITE, "DIRECTORY": "{data}/two"}},
    }},
    "DEFAULT_SERVER": "one",
    "PUBLIC_HOSTS": ["localhost"],
}}
"""

URLS = """
from django.contrib import admin
from django.urls import path

from tenancy.admin import TenantAdminSite

tenant_admin = TenantAdminSite(name="tenant_admin")
tenant_admin.adopt_registrations("flatpages", "redirects", from_site=admin.site)

urlpatterns = [path("admin/", admin.site.urls), path("manage/", tenant_admin.urls)]
"""

FLATPAGE_TEMPLATE = "<h1>{{ flatpage.title }}</h1>{{ flatpage.content }}"

IN_TENANTS = """
from django.contrib.flatpages.models import FlatPage
from django.contrib.redirects.models import Redirect
from django.contrib.sites.models import Site
from django.test import Client

from tenancy import tenant_context
from tenancy.models import Domain

def current():
    return Site.objects.get_current().domain

print("main", current())
for slug in ("acme", "globex"):
    with tenant_context(slug):
        print(slug, current())
        Redirect.objects.create(site=Site.objects.get_current(), old_path="/old/",
                                new_path=f"/new-{slug}/")
with tenant_context("acme"):
    page = FlatPage.objects.create(url="/about/", title="About", content="Acme's page")
    page.sites.add(Site.objects.get_current())
print("main", current())

for host, url in [
    ("acme.localhost", "/about/"), ("globex.localhost", "/about/"),
    ("acme.localhost", "/old/"), ("globex.localhost", "/old/"),
    ("localhost", "/admin/login/"), ("acme.localhost", "/manage/login/"),
]:
    response = Client(HTTP_HOST=host).get(url)
    body = response.content.decode() if response.status_code == 200 else ""
    print(host, url, response.status_code, response.get("Location", ""),
          "Acme's page" in body, "<form" in body)

# The platform's admin, on the main site: acme's change page, its domain edited there.
from django.contrib.auth.models import User
from tenancy.models import Tenant

User.objects.create_superuser("root", password="x")
staff = Client(HTTP_HOST="localhost")
staff.force_login(User.objects.get(username="root"))
acme = Tenant.objects.get(slug="acme")
domain = Domain.objects.get(domain="acme.localhost")
change = f"/admin/tenancy/tenant/{acme.pk}/change/"
print("change page", staff.get(change).status_code)
response = staff.post(change, {
    "name": "Acme Corp",
    "domains-TOTAL_FORMS": "1", "domains-INITIAL_FORMS": "1",
    "domains-0-id": str(domain.pk), "domains-0-tenant": str(acme.pk),
    "domains-0-domain": "www.acme.localhost", "domains-0-is_primary": "on",
    "memberships-TOTAL_FORMS": "0", "memberships-INITIAL_FORMS": "0",
})
print("saved", response.status_code, Tenant.objects.get(slug="acme").name)
with tenant_context("acme"):
    print("acme", current())
response = Client(HTTP_HOST="www.acme.localhost").get("/about/")
print("www.acme.localhost /about/", response.status_code)

# acme's primary domain given to globex: acme's Site follows the domain it has left.
Domain.objects.create(domain="extra.acme.localhost", tenant=acme)
moved = Domain.objects.get(domain="www.acme.localhost")
moved.tenant, moved.is_primary = Tenant.objects.get(slug="globex"), False
moved.save()
with tenant_context("acme"):
    print("acme after its domain moved", current())

# The same file name uploaded in two tenants: two files.
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

for slug in ("acme", "globex"):
    with tenant_context(slug):
        name = default_storage.save("logo.txt", ContentFile(f"{slug}'s logo".encode()))
        print(slug, name, default_storage.url(name))
for slug in ("acme", "globex"):
    with tenant_context(slug), default_storage.open("logo.txt") as logo:
        print(slug, logo.read().decode())
"""


def test_flatpages_redirects_and_sites_per_tenant(tmp_path):
    (tmp_path / "contrib_settings.py").write_text(SETTINGS.format(data=tmp_path))
    (tmp_path / "contrib_urls.py").write_text(URLS)
    (tmp_path / "templates" / "flatpages").mkdir(parents=True)
    (tmp_path / "templates" / "flatpages" / "default.html").write_text(FLATPAGE_TEMPLATE)
    manage = manager(tmp_path, "contrib_settings")

    manage("check")
    manage("check", "--tag", "admin")  # without Django's URL check, which imports the URLconf
    manage("migrate")
    manage("migrate_tenants")
    manage("create_tenant", "acme", "--domain", "acme.localhost")
    manage("create_tenant", "globex", "--domain", "globex.localhost", "--server", "two")
    assert (tmp_path / "one" / "tenant_acme.sqlite3").exists()
    assert (tmp_path / "two" / "tenant_globex.sqlite3").exists()  # on the second server
    lines = manage("shell", "-v", "0", "-c", textwrap.dedent(IN_TENANTS)).splitlines()
    assert lines == [
        "main example.com",  # the main database's Site
        "acme acme.localhost",  # each tenant's own, named after its primary domain
        "globex globex.localhost",
        "main example.com",
        "acme.localhost /about/ 200  True False",
        "globex.localhost /about/ 404  False False",  # acme's flatpage only on acme's host
        "acme.localhost /old/ 301 /new-acme/ False False",
        "globex.localhost /old/ 301 /new-globex/ False False",
        "localhost /admin/login/ 200  False True",
        "acme.localhost /manage/login/ 200  False True",
        "change page 200",  # the platform admin edits a tenant: its name and domain
        "saved 302 Acme Corp",
        "acme www.acme.localhost",  # the Site follows the primary domain
        "www.acme.localhost /about/ 200",
        "acme after its domain moved extra.acme.localhost",
        "acme logo.txt /media/tenants/acme/logo.txt",
        "globex logo.txt /media/tenants/globex/logo.txt",
        "acme acme's logo",
        "globex globex's logo",
    ]
    assert (tmp_path / "media" / "tenants" / "acme" / "logo.txt").read_text() == "acme's logo"
    manage("migrate_tenants", "--check")


def test_check_says_how_to_place_sites_and_move_admin_registrations(tmp_path):
    # As the apps are first added: all three in TENANT_APPS, registered on admin.site.
    newcomer = SETTINGS.replace(
        '"TENANT_APPS": ["django.contrib.flatpages", "django.contrib.redirects"]',
        '"TENANT_APPS": ["django.contrib.flatpages", "django.contrib.redirects", '
        '"django.contrib.sites"]',
    ).replace('    "SHARED_AND_TENANT_APPS": ["django.contrib.sites"],\n', "")
    assert "SHARED_AND_TENANT_APPS" not in newcomer
    assert newcomer.count("contrib.sites") == 2
    (tmp_path / "newcomer_settings.py").write_text(newcomer.format(data=tmp_path))
    (tmp_path / "contrib_urls.py").write_text("urlpatterns = []\n")
    done = run_manage(tmp_path, "newcomer_settings", "check")
    assert done.returncode == 1
    assert done.stderr.count("tenancy.E011") == 1
    assert "Move 'django.contrib.sites' to TENANCY['SHARED_AND_TENANT_APPS']" in done.stderr
    for label in ("flatpages", "redirects", "sites"):
        assert f"adopt_registrations('{label}', from_site=admin.site)" in done.stderr


def test_shared_and_tenant_app_is_routed_by_context(settings, alpha):
    settings.TENANCY = {**settings.TENANCY, "SHARED_AND_TENANT_APPS": ["contenttypes"]}
    router = TenantRouter()
    assert router.db_for_read(ContentType) is None  # the main database's copy
    with tenant_context(alpha):
        assert router.db_for_read(ContentType) == router.db_for_read(Note)
        assert router.db_for_read(ContentType) != "default"
    assert router.allow_migrate("default", "contenttypes") is None
    assert router.allow_migrate(router_alias(alpha), "contenttypes") is True
    assert router.allow_migrate("default", "tenantapp") is False


def router_alias(tenant):
    from tenancy.connections import alias_for

    return alias_for(tenant)


def test_relations_to_shared_and_tenant_apps_are_allowed_from_both_sides(settings):
    settings.TENANCY = {**settings.TENANCY, "TENANT_APPS": ["tests.tenantapp", "auth"]}
    [error] = check_relations([Permission])  # auth in tenants, contenttypes shared
    assert error.id == "tenancy.E003"
    assert "plain field" not in error.hint  # Permission is Django's: it cannot be changed
    assert "'contenttypes' to TENANCY['TENANT_APPS']" in error.hint
    assert "SHARED_AND_TENANT_APPS" in error.hint
    settings.TENANCY = {
        **settings.TENANCY,
        "TENANT_APPS": ["tests.tenantapp"],
        "SHARED_AND_TENANT_APPS": ["contenttypes", "auth"],
    }
    assert check_relations([Permission]) == []


def test_shared_and_tenant_model_needs_its_relations_on_both_sides(settings):
    settings.TENANCY = {
        **settings.TENANCY,
        "TENANT_APPS": ["tests.tenantapp"],
        "SHARED_AND_TENANT_APPS": ["auth"],
    }
    # auth.Permission's copy in the main database would point at the shared content types,
    # its copies in tenant databases at a table they do not have.
    assert [m.id for m in check_relations([Permission])] == ["tenancy.E003"]
    assert check_relations([Label]) == []  # tenant to tenant, as before


def test_adopt_registrations_moves_an_apps_models_to_the_tenant_site(settings):
    class LabelAdmin(admin.ModelAdmin):
        list_display = ["name"]

    shared_site = admin.AdminSite(name="contrib_shared")
    shared_site.register(Label, LabelAdmin)
    shared_site.register(ContentType)
    [error] = [m for m in check_admin_sites() if m.obj is shared_site]
    assert error.id == "tenancy.E007"
    assert "adopt_registrations('tenantapp'" in error.hint
    tenant_site = TenantAdminSite(name="contrib_tenant")
    tenant_site.adopt_registrations("tenantapp", from_site=shared_site)
    assert not shared_site.is_registered(Label)
    assert shared_site.is_registered(ContentType)  # another app's stays
    model_admin = tenant_site._registry[Label]
    assert isinstance(model_admin, LabelAdmin)
    assert isinstance(model_admin, TenantLogMixin)
    assert model_admin.list_display == ["name"]
    assert not [m for m in check_admin_sites() if m.obj in (shared_site, tenant_site)]
    # The tenant's admins manage the rows, as on a TenantModelAdmin, whatever their
    # permissions on the main site (this user has none).
    request = RequestFactory().get("/")
    request.user = AnonymousUser()
    tenant_site.has_permission = lambda request: True  # an admin of the request's tenant
    assert model_admin.has_change_permission(request)
    assert model_admin.has_delete_permission(request)
    tenant_site.has_permission = lambda request: False
    assert not model_admin.has_view_permission(request)


def test_an_app_is_either_tenant_or_shared_and_tenant(settings):
    settings.TENANCY = {
        **settings.TENANCY,
        "TENANT_APPS": ["tests.tenantapp", "contenttypes"],
        "SHARED_AND_TENANT_APPS": ["django.contrib.contenttypes"],
    }
    [error] = check_settings()
    assert error.id == "tenancy.E001"
    assert "SHARED_AND_TENANT_APPS'] and TENANT_APPS both name contenttypes" in error.msg


def test_objects_of_a_shared_and_tenant_app_stay_with_the_copy_they_came_from(
    settings, alpha, beta
):
    settings.TENANCY = {**settings.TENANCY, "SHARED_AND_TENANT_APPS": ["contenttypes"]}
    router = TenantRouter()
    main_copy = ContentType.objects.get_for_model(Note)  # outside tenants: the main database's
    assert main_copy._state.db == "default"
    permission = Permission.objects.filter(content_type=main_copy).first()
    with tenant_context(alpha):
        # Saved in a tenant it would overwrite the tenant's row with the same key.
        with pytest.raises(CrossTenantError, match="from the main database but tenant 'alpha'"):
            router.db_for_write(ContentType, instance=main_copy)
        # A relation of a main-database object leads to the main database's copy.
        assert router.db_for_read(ContentType, instance=permission) is None
        alphas_copy = ContentType(pk=main_copy.pk, app_label="tenantapp", model="note")
        alphas_copy._state.db = router.db_for_write(ContentType)
        assert router.db_for_write(ContentType, instance=alphas_copy) == alphas_copy._state.db
    with tenant_context(beta), pytest.raises(CrossTenantError, match="but tenant 'beta'"):
        router.db_for_write(ContentType, instance=alphas_copy)
    with pytest.raises(CrossTenantError, match="from tenant 'alpha' but no tenant is active"):
        router.db_for_read(ContentType, instance=alphas_copy)
