"""Tenant file storage: each tenant's files in a directory of its own, the main site's in
``shared/``, and a development view that serves a request's own site's files only."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured, SuspiciousFileOperation
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, default_storage
from django.urls import re_path

from tenancy.context import tenant_context
from tenancy.storage import TenantFileSystemStorage, TenantPrefixMixin, serve_tenant_media

# ROOT_URLCONF for the view's tests.
urlpatterns = [re_path(r"^media/(?P<path>.*)$", serve_tenant_media)]


class PrefixedStorage(TenantPrefixMixin, FileSystemStorage):
    """The mixin on a storage that knows nothing of tenants, as on django-storages' S3."""


@pytest.fixture
def media(settings, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = tmp_path
    settings.MEDIA_URL = "/media/"
    return tmp_path


def save(storage, name: str, text: str) -> str:
    return storage.save(name, ContentFile(text.encode()))


def read(storage, name: str) -> str:
    with storage.open(name) as file:
        return file.read().decode()


def test_two_tenants_keep_their_own_file_under_one_name(media, alpha, beta):
    storage = TenantFileSystemStorage()
    with tenant_context(alpha):
        assert save(storage, "docs/report.txt", "alpha's") == "docs/report.txt"
    with tenant_context(beta):
        # Not renamed: beta has no such file, whatever alpha has.
        assert save(storage, "docs/report.txt", "beta's") == "docs/report.txt"
        assert read(storage, "docs/report.txt") == "beta's"
    with tenant_context(alpha):
        assert read(storage, "docs/report.txt") == "alpha's"
    assert (media / "tenants/alpha/docs/report.txt").read_text() == "alpha's"
    assert (media / "tenants/beta/docs/report.txt").read_text() == "beta's"


def test_path_and_url_follow_the_tenant_of_each_call(media, alpha, beta):
    storage = TenantFileSystemStorage()
    with tenant_context(alpha):
        assert storage.path("a.txt") == str(media / "tenants/alpha/a.txt")
        assert storage.url("a b.txt") == "/media/tenants/alpha/a%20b.txt"
    with tenant_context(beta):
        assert storage.path("a.txt") == str(media / "tenants/beta/a.txt")
        assert storage.url("a.txt") == "/media/tenants/beta/a.txt"
        assert storage.base_url == "/media/tenants/beta/"
    assert storage.path("a.txt") == str(media / "shared/a.txt")
    assert storage.url("a.txt") == "/media/shared/a.txt"


def test_location_and_url_arguments_are_the_root_of_every_site(tmp_path, alpha):
    storage = TenantFileSystemStorage(tmp_path / "files", "https://cdn.example.test/f")
    with tenant_context(alpha):
        assert storage.path("a.txt") == str(tmp_path / "files/tenants/alpha/a.txt")
        assert storage.url("a.txt") == "https://cdn.example.test/f/tenants/alpha/a.txt"


def test_the_main_sites_files_are_apart_from_the_tenants(media, alpha):
    storage = TenantFileSystemStorage()
    assert save(storage, "logo.png", "main") == "logo.png"
    with tenant_context(alpha):
        assert not storage.exists("logo.png")
        assert save(storage, "logo.png", "alpha") == "logo.png"
        assert storage.listdir("") == ([], ["logo.png"])
    assert read(storage, "logo.png") == "main"
    assert (media / "shared/logo.png").read_text() == "main"
    assert storage.listdir("") == ([], ["logo.png"])


def test_a_main_site_name_cannot_reach_a_tenants_files(media, alpha):
    storage = TenantFileSystemStorage()
    with tenant_context(alpha):
        save(storage, "secret.txt", "alpha's")
    # The tenants' prefix is an ordinary directory name inside shared/...
    assert not storage.exists("tenants/alpha/secret.txt")
    with pytest.raises(FileNotFoundError):
        storage.open("tenants/alpha/secret.txt")
    # ...and leaving shared/ is refused.
    with pytest.raises(SuspiciousFileOperation):
        storage.open("../tenants/alpha/secret.txt")


@pytest.mark.parametrize(
    "name", ["../beta/secret.txt", "docs/../../beta/secret.txt", "/tmp/secret.txt"]
)
def test_names_cannot_leave_the_tenants_directory(media, alpha, beta, name):
    storage = TenantFileSystemStorage()
    with tenant_context(beta):
        save(storage, "secret.txt", "beta's")
    with tenant_context(alpha):
        for operation in (storage.path, storage.exists, storage.open, storage.delete):
            with pytest.raises(SuspiciousFileOperation):
                operation(name)
        with pytest.raises(SuspiciousFileOperation):
            save(storage, name, "overwritten")
    assert (media / "tenants/beta/secret.txt").read_text() == "beta's"


def test_every_operation_acts_in_the_current_tenants_directory(media, alpha, beta):
    storage = TenantFileSystemStorage()
    with tenant_context(alpha):
        save(storage, "a.txt", "12345")
    with tenant_context(beta):
        save(storage, "a.txt", "12")
        assert storage.size("a.txt") == 2
        assert storage.get_available_name("b.txt") == "b.txt"
        assert storage.get_available_name("a.txt") != "a.txt"
        storage.delete("a.txt")
        assert not storage.exists("a.txt")
    with tenant_context(alpha):
        assert storage.exists("a.txt")
        assert storage.size("a.txt") == 5
        assert storage.get_modified_time("a.txt") is not None


def test_default_storage_setting_follows_the_tenant(media, settings, alpha, beta):
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "tenancy.storage.TenantFileSystemStorage"},
    }
    with tenant_context(alpha):
        save(default_storage, "upload.txt", "alpha's")
    with tenant_context(beta):
        assert not default_storage.exists("upload.txt")
    assert (media / "tenants/alpha/upload.txt").read_text() == "alpha's"


def test_prefixes_are_options(media, alpha):
    storage = TenantFileSystemStorage(tenants_prefix="t", shared_prefix="main")
    with tenant_context(alpha):
        assert storage.url("a.txt") == "/media/t/alpha/a.txt"
    assert storage.path("a.txt") == str(media / "main/a.txt")
    # Migrations record the storage of a FileField with its options.
    assert storage.deconstruct() == (
        "tenancy.storage.TenantFileSystemStorage",
        (),
        {"tenants_prefix": "t", "shared_prefix": "main"},
    )


@pytest.mark.parametrize(
    "options",
    [
        {"tenants_prefix": "a/b"},
        {"tenants_prefix": ".."},
        {"shared_prefix": ""},
        {"tenants_prefix": "files", "shared_prefix": "Files"},
    ],
)
def test_bad_prefixes_are_refused(options):
    for storage_class in (TenantFileSystemStorage, PrefixedStorage):
        with pytest.raises(ImproperlyConfigured, match="prefix"):
            storage_class(**options)


def test_mixin_keeps_each_tenants_files_under_its_prefix(media, alpha, beta):
    storage = PrefixedStorage()
    with tenant_context(alpha):
        assert save(storage, "docs/report.txt", "alpha's") == "docs/report.txt"
        # A name taken in the tenant gets another, relative to the tenant's directory.
        second = save(storage, "docs/report.txt", "alpha's second")
        assert second.startswith("docs/report_")
        assert read(storage, second) == "alpha's second"
        assert storage.url("docs/report.txt") == "/media/tenants/alpha/docs/report.txt"
        assert storage.path("x") == str(media / "tenants/alpha/x")
    with tenant_context(beta):
        assert not storage.exists("docs/report.txt")
        assert save(storage, "docs/report.txt", "beta's") == "docs/report.txt"
        assert storage.listdir("docs") == ([], ["report.txt"])
        assert storage.size("docs/report.txt") == 6
        storage.delete("docs/report.txt")
        with pytest.raises(SuspiciousFileOperation):
            storage.open("../alpha/docs/report.txt")
    with tenant_context(alpha):
        assert read(storage, "docs/report.txt") == "alpha's"
        assert storage.get_modified_time("docs/report.txt") is not None
        assert sorted(storage.listdir("")[0]) == ["docs"]
    assert save(storage, "logo.png", "main") == "logo.png"
    assert (media / "shared/logo.png").read_text() == "main"
    assert (media / "tenants/alpha/docs/report.txt").read_text() == "alpha's"
    assert not (media / "tenants/beta/docs/report.txt").exists()


@pytest.fixture
def served(media, settings, alpha, beta):
    settings.ROOT_URLCONF = "tests.test_storage"
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "tenancy.storage.TenantFileSystemStorage"},
    }
    storage = TenantFileSystemStorage()
    with tenant_context(alpha):
        save(storage, "a.txt", "alpha's")
    with tenant_context(beta):
        save(storage, "b.txt", "beta's")
    save(storage, "main.txt", "main")


@pytest.mark.parametrize(
    ("host", "path", "content"),
    [
        ("alpha.example.test", "/media/tenants/alpha/a.txt", b"alpha's"),
        ("beta.example.test", "/media/tenants/beta/b.txt", b"beta's"),
        ("admin.example.test", "/media/shared/main.txt", b"main"),
    ],
)
def test_view_serves_the_requests_own_files(client, served, host, path, content):
    response = client.get(path, HTTP_HOST=host)
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == content


@pytest.mark.parametrize(
    ("host", "path"),
    [
        ("beta.example.test", "/media/tenants/alpha/a.txt"),
        ("beta.example.test", "/media/tenants/beta/../alpha/a.txt"),
        ("alpha.example.test", "/media/shared/main.txt"),
        ("admin.example.test", "/media/tenants/alpha/a.txt"),
        ("admin.example.test", "/media/shared/../tenants/alpha/a.txt"),
    ],
)
def test_view_never_serves_another_sites_files(client, served, host, path):
    assert client.get(path, HTTP_HOST=host).status_code == 404
