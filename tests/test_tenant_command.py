"""tenant_command runs other management commands inside tenants."""

import io
import json
import os

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tenancy import tenant_context
from tests.tenantapp.models import Note


def run(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command("tenant_command", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_dumpdata_reads_the_tenants_database(alpha, beta, capsys):
    with tenant_context(alpha):
        Note.objects.create(text="alpha's note")
    run("--tenant", "alpha", "dumpdata", "tenantapp.note")
    dumped = json.loads(capsys.readouterr().out)
    assert [row["fields"]["text"] for row in dumped] == ["alpha's note"]


def test_loaddata_writes_into_the_tenants_database(beta, tmp_path):
    fixture = tmp_path / "notes.json"
    fixture.write_text(
        json.dumps([{"model": "tenantapp.note", "pk": 7, "fields": {"text": "loaded"}}])
    )
    run("--tenant", "beta", "loaddata", str(fixture), "--verbosity", "0")
    with tenant_context(beta):
        assert list(Note.objects.values_list("pk", "text")) == [(7, "loaded")]


def test_shell_code_runs_inside_each_tenant(alpha, beta, capsys):
    code = "from tenancy import require_tenant; print('in', require_tenant().slug)"
    _, err = run("--all-tenants", "shell", "--verbosity", "0", "-c", code)
    assert capsys.readouterr().out.splitlines() == ["in alpha", "in beta"]
    assert err.splitlines() == ["== alpha", "== beta"]


def test_failure_in_one_tenant_is_reported_and_the_rest_run(alpha, beta, capsys):
    code = (
        "from tenancy import require_tenant\n"
        "if require_tenant().slug == 'alpha': raise ValueError('boom')\n"
        "print('ok')"
    )
    with pytest.raises(CommandError, match=r"shell failed for 1 tenant\(s\): alpha"):
        run("--all-tenants", "shell", "--verbosity", "0", "-c", code)
    assert capsys.readouterr().out.splitlines() == ["ok"]


def test_unknown_tenant_and_command(alpha):
    with pytest.raises(CommandError, match="No tenant with slug 'nobody'"):
        run("--tenant", "nobody", "dumpdata")
    with pytest.raises(CommandError, match="Unknown command: 'nope'"):
        run("--tenant", "alpha", "nope")


def test_jobs_run_tenants_in_processes_of_their_own_each_output_in_one_piece(alpha, beta, gamma):
    code = (
        "import os, time\n"
        "from tenancy import require_tenant\n"
        "from tests.tenantapp.models import Note\n"
        "slug = require_tenant().slug\n"
        "if slug == 'beta': raise ValueError('boom')\n"
        "print('start', slug, os.getpid()); time.sleep(0.2)\n"
        "print('end', slug, Note.objects.count())"
    )
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError, match=r"shell failed for 1 tenant\(s\): beta"):
        call_command(
            "tenant_command",
            "--all-tenants",
            "--jobs",
            "2",
            "shell",
            "-c",
            code,
            stdout=out,
            stderr=err,
        )
    lines = out.getvalue().splitlines()
    assert "beta: ValueError: boom" in err.getvalue()
    # Each tenant's two lines together, from a process that is not this one, with its
    # own rows (gamma has 25 notes, alpha none).
    pieces = {line.split()[1]: line.split() for line in lines if line.startswith("end")}
    assert {slug: words[2] for slug, words in pieces.items()} == {"alpha": "0", "gamma": "25"}
    for slug in ("alpha", "gamma"):
        start = next(i for i, line in enumerate(lines) if line.startswith(f"start {slug}"))
        assert lines[start + 1].startswith(f"end {slug}")
        assert lines[start].split()[2] != str(os.getpid())
