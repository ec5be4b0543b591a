"""The example project in headless Chromium, as a person uses it: the platform admin
provisions a tenant in the admin, its member works in it on its own subdomain, another
tenant does not see that work, and the admin deletes the tenant again.

Needs Chromium (Debian's `chromium`; `make test` installs it when missing and run as root)
and Playwright's Python package, which drives it; Playwright downloads no browser here.
Screenshots of the key pages are saved under test-artifacts/browser/.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import django
import pytest

from tests.example import ROOT, example_project
from tests.settings import BACKEND, PGBOUNCER

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("TENANCY_TEST_CHROMIUM") or shutil.which("chromium") or ""
# As the machine's own checks start it: nothing may reach for the network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TASK = "Ship the browser test"
VIEWPORT = {"width": 1440, "height": 900}  # the tenant list without scrolling


def _missing(what: str) -> None:
    message = f"{what}; the browser tests need it (see the README, Tests)"
    if os.environ.get("CI"):  # never skipped silently where the suite must be complete
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright's Python package is not installed")
    if not CHROMIUM:
        _missing("Chromium was not found")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def screenshots() -> object:
    run = f"{BACKEND}{'-pgbouncer' if PGBOUNCER else ''}-django{django.VERSION[0]}"
    folder = ROOT / "test-artifacts" / "browser" / run
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    count = iter(range(1, 100))

    def take(page: object, name: str) -> Path:
        path = folder / f"{next(count):02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
        return path

    return take


def sign_in(page: object, username: str) -> None:
    page.fill("#id_username", username)  # type: ignore[attr-defined]
    page.fill("#id_password", "demo")  # type: ignore[attr-defined]
    page.click("[type=submit]")  # type: ignore[attr-defined]


def test_provision_use_and_delete_a_tenant_in_the_browser(
    tmp_path: Path, browser: object, screenshots: object
) -> None:
    from playwright.sync_api import expect

    with example_project(tmp_path) as example:
        example.set_up()
        admin_id = example.manage(
            "shell",
            "--verbosity",
            "0",
            "-c",
            "from django.contrib.auth.models import User; "
            "print(User.objects.get(username='admin').pk)",
        ).strip()
        with example.serve() as port:
            main = f"http://localhost:{port}"
            admin = browser.new_page(viewport=VIEWPORT)  # type: ignore[attr-defined]

            # The platform admin signs in and provisions gamma through the add form.
            admin.goto(f"{main}/admin/")
            sign_in(admin, "admin")
            expect(admin.locator("#site-name")).to_be_visible()
            admin.goto(f"{main}/admin/tenancy/tenant/add/")
            admin.fill("#id_slug", "gamma")
            admin.fill("#id_name", "Gamma GmbH")
            server = "second" if example.postgres else "main"  # on PostgreSQL, the other one
            admin.select_option("#id_server", server)
            admin.fill("#id_domains-0-domain", "gamma.localhost")
            admin.check("#id_domains-0-is_primary")
            admin.fill("#id_memberships-0-user", admin_id)
            admin.check("#id_memberships-0-is_admin")
            screenshots(admin, "add-tenant-form")
            admin.click("input[name=_save]")
            expect(admin.locator(".messagelist")).to_contain_text("gamma")
            row = admin.locator("#result_list tr", has_text="Gamma GmbH")
            expect(row).to_contain_text("active")
            expect(row).to_contain_text("up to date")
            screenshots(admin, "tenant-provisioned")

            # Its member signs in on gamma's own domain and adds a task.
            gamma = browser.new_page(viewport=VIEWPORT)  # type: ignore[attr-defined]
            gamma.goto(f"http://gamma.localhost:{port}/")
            expect(gamma).to_have_url(f"http://gamma.localhost:{port}/accounts/login/?next=/")
            sign_in(gamma, "admin")
            expect(gamma.locator("h1")).to_have_text("Gamma GmbH")
            expect(gamma.locator("#tasks")).to_have_text("No tasks.")
            gamma.fill("#id_project", "Launch")
            gamma.fill("#id_title", TASK)
            gamma.click("text=Add task")
            expect(gamma.locator("#tasks")).to_contain_text(f"Launch: {TASK}")
            screenshots(gamma, "gamma-task-added")

            # Another tenant's member sees only that tenant's tasks.
            alpha = browser.new_page(viewport=VIEWPORT)  # type: ignore[attr-defined]
            alpha.goto(f"http://alpha.localhost:{port}/")
            sign_in(alpha, "ann")
            expect(alpha.locator("#tasks")).to_contain_text("Write the launch plan")
            expect(alpha.locator("#tasks")).not_to_contain_text(TASK)
            alpha.goto(f"http://alpha.localhost:{port}/api/tasks/")
            assert TASK not in alpha.content()
            screenshots(alpha, "alpha-without-gamma-task")
            # ... and the platform admin, not a member of alpha, is turned away there.
            response = gamma.goto(f"http://alpha.localhost:{port}/")
            assert response is not None
            assert "/accounts/login/" in response.url

            # The admin renames gamma and moves it to another domain on its change page.
            admin.goto(f"{main}/admin/tenancy/tenant/")
            admin.locator("#result_list tr", has_text="Gamma GmbH").locator("th a").click()
            expect(admin.locator("#id_domains-0-domain")).to_have_value("gamma.localhost")
            expect(admin.locator("a.deletelink")).to_be_visible()
            admin.fill("#id_name", "Gamma AG")
            admin.fill("#id_domains-0-domain", "gamma-ag.localhost")
            screenshots(admin, "change-tenant-form")
            admin.click("input[name=_save]")
            row = admin.locator("#result_list tr", has_text="Gamma AG")
            expect(row).to_contain_text("gamma-ag.localhost")
            screenshots(admin, "tenant-changed")
            gamma.goto(f"http://gamma-ag.localhost:{port}/")
            sign_in(gamma, "admin")  # a new site: signing in again
            expect(gamma.locator("h1")).to_have_text("Gamma AG")
            expect(gamma.locator("#tasks")).to_contain_text(f"Launch: {TASK}")

            # The admin deletes gamma through the confirmation page: the slug must be typed.
            assert "example_tenant_gamma" in example.tenant_databases()[server]
            admin.goto(f"{main}/admin/tenancy/tenant/")
            admin.locator("#result_list tr", has_text="Gamma AG").locator(
                "input[name=_selected_action]"
            ).check()
            admin.select_option("select[name=action]", "delete_selected_tenants")
            admin.click("button[name=index]")
            confirm = admin.locator("form", has=admin.locator("input[name=confirm]"))
            expect(confirm).to_contain_text("example_tenant_gamma")
            confirm.locator("input[type=text]").fill("gama")
            confirm.locator("input[type=submit]").click()
            expect(admin.locator(".errorlist")).to_be_visible()  # a typo deletes nothing
            screenshots(admin, "delete-refused-for-a-typo")
            confirm.locator("input[type=text]").fill("gamma")
            screenshots(admin, "delete-confirmation")
            confirm.locator("input[type=submit]").click()
            expect(admin.locator(".messagelist")).to_contain_text("Tenant gamma: deleted.")
            expect(admin.locator("#result_list")).not_to_contain_text("Gamma AG")
            screenshots(admin, "tenant-deleted")

            assert "example_tenant_gamma" not in set().union(*example.tenant_databases().values())
            gone = gamma.goto(f"http://gamma-ag.localhost:{port}/")
            assert gone is not None
            assert gone.status == 404
