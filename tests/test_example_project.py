"""The example project that `make demo` serves: set up from scratch, twice, and queried."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tenancy.backends import get_server
from tests.settings import BACKEND

ROOT = Path(__file__).resolve().parent.parent

REQUESTS = """
from django.test import Client
client = Client()
print(client.get("/api/tasks/", HTTP_HOST="alpha.localhost").status_code)
assert client.login(username="ann", password="demo")
for host in ("alpha.localhost", "beta.localhost"):
    print(client.get("/api/tasks/", HTTP_HOST=host).content.decode())
client.post("/", {"project": "Launch", "title": "Send invites"}, HTTP_HOST="alpha.localhost")
print(client.get("/api/tasks/", HTTP_HOST="alpha.localhost").content.decode())
print(client.get("/manage/projects/task/", HTTP_HOST="alpha.localhost").status_code)
client.login(username="bob", password="demo")
print(client.get("/api/tasks/", HTTP_HOST="beta.localhost").content.decode())
print(client.get("/manage/projects/task/", HTTP_HOST="beta.localhost").status_code)
print(client.get("/", HTTP_HOST="gamma.localhost").status_code)
"""


# What scripts/demo runs first on PostgreSQL: Django's migrate does not create databases.
CREATE_MAIN_DATABASE = (
    "from tenancy.backends import get_server\n"
    "get_server('main').create_database('tenancy_example')"
)


def manage(data_dir, *args, **env):
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={"TENANCY_EXAMPLE_DATA": str(data_dir), "PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout


def test_demo_set_up_serves_each_tenant_its_own_tasks(tmp_path):
    manage(tmp_path, "migrate", "--verbosity", "0")
    manage(tmp_path, "seed_demo")
    manage(tmp_path, "seed_demo")  # running it again changes nothing
    lines = manage(tmp_path, "shell", "--verbosity", "0", "-c", REQUESTS).splitlines()
    anonymous, alpha, not_member, alpha_after, alpha_admin, beta, bob_admin, unknown = lines
    assert anonymous == "302"  # to the sign-in page
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
    assert sorted(p.name for p in (tmp_path / "tenants").glob("*.sqlite3")) == [
        "example_tenant__template.sqlite3",  # new tenants are copies of it
        "example_tenant_alpha.sqlite3",
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


@pytest.mark.skipif(BACKEND != "postgresql", reason="the PostgreSQL set-up of the example")
def test_demo_on_two_postgresql_servers(tmp_path, db_access):
    servers = {
        "TENANCY_EXAMPLE_POSTGRES": os.environ["TENANCY_TEST_PG_1"],
        "TENANCY_EXAMPLE_POSTGRES_2": os.environ["TENANCY_TEST_PG_2"],
    }
    try:
        manage(tmp_path, "shell", "-c", CREATE_MAIN_DATABASE, **servers)
        manage(tmp_path, "migrate", "--verbosity", "0", **servers)
        manage(tmp_path, "seed_demo", **servers)
        lines = manage(tmp_path, "shell", "--verbosity", "0", "-c", REQUESTS, **servers)
        _, alpha, _, _, _, beta, _, _ = lines.splitlines()
        assert [t["title"] for t in json.loads(beta)["tasks"]] == ["Fix the roof"]
        assert json.loads(alpha)["tenant"] == "alpha"
        assert "example_tenant_alpha" in get_server("one").list_databases()
        assert "example_tenant_beta" in get_server("two").list_databases()
        assert "example_tenant_beta" not in get_server("one").list_databases()
    finally:
        for name in ("one", "two"):
            server = get_server(name)
            for database in server.list_databases():
                if database.startswith("example_tenant_") or database == "tenancy_example":
                    server.drop_database(database)
