#!/usr/bin/env python
"""200 tests through the pytest plugin's ``tenant`` fixture against the same 200 tests on
plain single-database Django.

    scripts/with-postgres -n 1 .venv/bin/python benchmarks/tenant_tests.py [--tests 200]

Both run in the small project of the test suite (tests/plugin_project) on the same
PostgreSQL cluster, each test writing two rows and reading them back. Tenancy: the model
lives in the test tenant's database, the test uses ``tenant``; plain: the same app in the
only database, the test uses ``db`` (and tenancy's plugin is disabled). Each suite runs
once with ``--create-db`` (test databases created and migrated) and then seven times with
``--reuse-db`` (interleaved); the figures are wall-clock seconds of the whole pytest
process, the best and the median of the seven.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "tests" / "plugin_project"
sys.path.insert(0, str(ROOT))

from benchmarks.postgres import maintenance_connection  # noqa: E402

PLAIN_SETTINGS = """
from shop.settings import *  # noqa: F403

INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "notes"]
MIDDLEWARE = []
DATABASE_ROUTERS = []
DATABASES = {"default": {**SERVERS["main"], "NAME": "plain"}}  # noqa: F405
del TENANCY
"""

TESTS = """
import pytest

from notes.models import Note


@pytest.mark.parametrize("number", range({count}))
def test_note(number, {fixture}):
    Note.objects.create(text=f"first {{number}}")
    Note.objects.create(text=f"second {{number}}")
    assert Note.objects.filter(text__startswith="first").count() == 1
    assert Note.objects.count() == 2
"""


def run(project: Path, *options: str) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *options],
        cwd=project,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"pytest failed in {project}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=200)
    parser.add_argument("--warm-runs", type=int, default=7)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tenancy-bench-") as directory:
        project = Path(directory)
        shutil.copytree(PROJECT, project, dirs_exist_ok=True)
        (project / "shop" / "plain_settings.py").write_text(PLAIN_SETTINGS)
        (project / "check_tenancy.py").write_text(TESTS.format(count=args.tests, fixture="tenant"))
        (project / "check_plain.py").write_text(TESTS.format(count=args.tests, fixture="db"))
        suites = {
            "tenancy (tenant fixture)": ["check_tenancy.py"],
            "plain Django (db fixture)": [
                "check_plain.py",
                "--ds=shop.plain_settings",
                "-p",
                "no:tenancy",
            ],
        }
        cold = {name: run(project, *options, "--create-db") for name, options in suites.items()}
        warm: dict[str, list[float]] = {name: [] for name in suites}
        for _ in range(args.warm_runs):  # interleaved, so that both see the same machine
            for name, options in suites.items():
                warm[name].append(run(project, *options, "--reuse-db"))
        drop_test_databases()

    print(f"{args.tests} tests, wall-clock seconds of one pytest run")
    print(f"{'suite':28} {'--create-db':>12} {'--reuse-db best':>16} {'median':>8}")
    for name in suites:
        best, median = min(warm[name]), statistics.median(warm[name])
        print(f"{name:28} {cold[name]:12.2f} {best:16.2f} {median:8.2f}")
    tenancy, plain = warm.values()
    cold_tenancy, cold_plain = cold.values()
    print(
        f"ratio tenancy/plain, --reuse-db: best {min(tenancy) / min(plain):.2f}x, "
        f"median {statistics.median(tenancy) / statistics.median(plain):.2f}x; "
        f"--create-db {cold_tenancy / cold_plain:.2f}x (target <= 1.2x)"
    )
    extra = (min(tenancy) - min(plain)) / args.tests * 1000
    print(f"cost of the tenant per test (best runs): {extra:.2f} ms")


def drop_test_databases() -> None:
    """Drop the test databases both suites kept with --reuse-db."""
    from psycopg import sql

    with maintenance_connection() as connection:
        for (name,) in connection.execute("SELECT datname FROM pg_database").fetchall():
            if name.startswith(("test_shop", "test_plain")):
                connection.execute(
                    sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name))
                )


if __name__ == "__main__":
    main()
