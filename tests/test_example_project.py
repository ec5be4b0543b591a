"""The example project that `make demo` serves: set up from scratch, twice, and queried."""

import json
import subprocess
import sys

import pytest

from tests.example import ROOT, ExampleProject, example_project
from tests.settings import BACKEND

REQUESTS = """
from django.test import Client
client = Client()
def sign_in(username, host):
    data = {"username": username, "password": "demo"}
    assert client.post("/accounts/login/", data, HTTP_HOST=host).status_code == 302
print(client.get("/api/tasks/", HTTP_HOST="alpha.localhost").status_code)
sign_in("ann", "alpha.localhost")
print(client.get("/api/tasks/", HTTP_HOST="alpha.localhost").content.decode())
print(client.get("/api/tasks/", HTTP_HOST="beta.localhost").status_code)
client.post("/", {"project": "Launch", "title": "Send invites"}, HTTP_HOST="alpha.localhost")
print(client.get("/api/tasks/", HTTP_HOST="alpha.localhost").content.decode())
print(client.get("/manage/projects/task/", HTTP_HOST="alpha.localhost").status_code)
sign_in("ann", "beta.localhost")
print(client.get("/api/tasks/", HTTP_HOST="beta.localhost").content.decode())
sign_in("bob", "beta.localhost")
print(client.get("/api/tasks/", HTTP_HOST="beta.localhost").content.decode())
print(client.get("/manage/projects/task/", HTTP_HOST="beta.localhost").status_code)
print(client.get("/", HTTP_HOST="gamma.localhost").status_code)
print(client.get("/admin/", HTTP_HOST="alpha.localhost").status_code)
print(client.get("/api/tasks/", HTTP_HOST="localhost").status_code)
print(client.get("/admin/", HTTP_HOST="localhost").status_code)
"""


def manage(data_dir, *args):
    """The example on SQLite files in DATA_DIR, whatever the suite's backend."""
    return ExampleProject(data_dir, postgres=False).manage(*args)


def test_demo_set_up_serves_each_tenant_its_own_tasks(tmp_path):
    manage(tmp_path, "migrate", "--verbosity", "0")
    manage(tmp_path, "seed_demo")
    manage(tmp_path, "seed_demo")  # running it again changes nothing
    lines = manage(tmp_path, "shell", "--verbosity", "0", "-c", REQUESTS).splitlines()
    (
        anonymous,
        alpha,
        elsewhere,
        alpha_after,
        alpha_admin,
        not_member,
        beta,
        bob_admin,
        unknown,
        platform_admin_on_tenant,
        tasks_on_main_site,
        platform_admin,
    ) = lines
    assert anonymous == "302"  # to the sign-in page
    assert elsewhere == "302"  # ann signed in on alpha, not on beta
    assert json.loads(alpha)["tenant"] == "alpha"
    assert [t["title"] for t in json.loads(alpha)["tasks"]] == [
        "Write the launch plan",
        "Book the venue",
    ]
    assert not_member.startswith("ann is not a member of Beta LLC")
    assert [t["title"] for t in json.loads(alpha_after)["tasks"]][-1] == "Send invites"
    assert alpha_admin == "200"  # ann is alpha's admin
    assert [t["title"] for t in json.loads(beta)["tasks"]] == ["Fix the roof"]
    assert bob_admin == "302"  # bob is a member of beta, not its admin
    assert unknown == "404"
    # The platform admin is on the main site only, the tenants' pages on tenants' hosts only.
    assert (platform_admin_on_tenant, tasks_on_main_site, platform_admin) == ("404", "404", "302")
    assert sorted(p.name for p in (tmp_path / "tenants").glob("*.sqlite3")) == [
        "example_tenant__spare_1.sqlite3",  # a copy of it, made ahead for the next tenant
        "example_tenant__template.sqlite3",  # new tenants are copies of it
        "example_tenant_alpha.sqlite3",
    ]
    # beta is on the second server (directory), with a template and spare of its own.
    assert sorted(p.name for p in (tmp_path / "tenants-second").glob("*.sqlite3")) == [
        "example_tenant__spare_1.sqlite3",
        "example_tenant__template.sqlite3",
        "example_tenant_beta.sqlite3",
    ]


def test_shell_code_without_tenant_fails_closed(tmp_path):
    manage(tmp_path, "migrate", "--verbosity", "0")
    manage(tmp_path, "seed_demo")
    count_tasks = "from example_project.projects.models import Task; print(Task.objects.count())"
    with pytest.raises(subprocess.CalledProcessError) as failed:
        manage(tmp_path, "shell", "--verbosity", "0", "-c", count_tasks)
    assert "NoTenantError: projects.Task is stored in tenant databases" in failed.value.stderr
    in_tenant = f"from tenancy import tenant_context\nwith tenant_context('beta'):\n {count_tasks}"
    assert manage(tmp_path, "shell", "--verbosity", "0", "-c", in_tenant).strip() == "1"


# On each server: the template new tenants are copies of, and one copy made ahead.
TEMPLATE_AND_SPARE = {"example_tenant__template", "example_tenant__spare_1"}


@pytest.mark.skipif(BACKEND != "postgresql", reason="the PostgreSQL set-up of the example")
def test_demo_on_two_postgresql_servers(tmp_path):
    with example_project(tmp_path, postgres=True) as example:
        example.set_up()
        lines = example.manage("shell", "--verbosity", "0", "-c", REQUESTS)
        _, alpha, _, _, _, _, beta, *_ = lines.splitlines()
        assert [t["title"] for t in json.loads(beta)["tasks"]] == ["Fix the roof"]
        assert json.loads(alpha)["tenant"] == "alpha"
        assert example.tenant_databases() == {
            "main": {*TEMPLATE_AND_SPARE, "example_tenant_alpha"},
            "second": {*TEMPLATE_AND_SPARE, "example_tenant_beta"},
        }


WITHOUT_PSYCOPG = """
import sys
sys.modules["psycopg"] = None  # as if the postgres extra were not installed
sys.argv = ["manage.py", *sys.argv[1:]]
from django.core.management import execute_from_command_line
execute_from_command_line(sys.argv)
"""


def test_a_project_on_sqlite_alone_needs_no_psycopg(tmp_path):
    """`pip install tenancy` without the postgres extra: every command of a SQLite project
    works, moving a tenant between two directories included."""
    example = ExampleProject(tmp_path, postgres=False)

    def manage(*args):
        done = subprocess.run(
            [sys.executable, "-c", WITHOUT_PSYCOPG, *args],
            cwd=ROOT,
            env={**example.env, "DJANGO_SETTINGS_MODULE": "example_project.settings"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    manage("migrate", "--verbosity", "0")
    manage("create_tenant", "acme", "--domain", "acme.localhost")
    assert "is on server second" in manage("move_tenant", "acme", "--server", "second")
    assert "up to date" in manage("migrate_tenants")
