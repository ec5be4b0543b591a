"""The example project that `make demo` serves: set up from scratch, twice, and queried."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

REQUESTS = """
from django.test import Client
client = Client()
for host in ("alpha.localhost", "beta.localhost"):
    print(client.get("/api/tasks/", HTTP_HOST=host).content.decode())
print(client.get("/", HTTP_HOST="gamma.localhost").status_code)
"""


def manage(data_dir, *args):
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={"TENANCY_EXAMPLE_DATA": str(data_dir), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout


def test_demo_set_up_serves_each_tenant_its_own_tasks(tmp_path):
    manage(tmp_path, "migrate", "--verbosity", "0")
    manage(tmp_path, "seed_demo")
    manage(tmp_path, "seed_demo")  # running it again changes nothing
    alpha, beta, unknown = manage(
        tmp_path, "shell", "--verbosity", "0", "-c", REQUESTS
    ).splitlines()
    assert json.loads(alpha)["tenant"] == "alpha"
    assert [t["title"] for t in json.loads(alpha)["tasks"]] == [
        "Write the launch plan",
        "Book the venue",
    ]
    assert [t["title"] for t in json.loads(beta)["tasks"]] == ["Fix the roof"]
    assert unknown == "404"
    assert sorted(p.name for p in (tmp_path / "tenants").glob("*.sqlite3")) == [
        "tenant__template.sqlite3",  # new tenants are copies of it
        "tenant_alpha.sqlite3",
        "tenant_beta.sqlite3",
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
