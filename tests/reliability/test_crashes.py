"""Commands killed with SIGKILL at random points (no clean-up code of theirs runs), then run
again: the re-run finishes the job, every tenant ends up active and current, and the
servers hold exactly the databases the registry names (no orphans)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.example import ExampleProject, example_project

pytestmark = pytest.mark.reliability

SEED = 20261123
KILLS = int(os.environ.get("TENANCY_CRASH_KILLS", "5"))  # `make soak` asks for more
FLEET = 8  # tenants that migrate_tenants has work for
MIGRATE_KILLS = int(os.environ.get("TENANCY_CRASH_KILLS", "3"))


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExampleProject]:
    with example_project(tmp_path_factory.mktemp("example")) as example:
        example.set_up()
        yield example


def other_server(example: ExampleProject) -> str:
    return "second" if example.postgres else "main"


def kill_at(process: subprocess.Popen[str], seconds: float) -> bool:
    """SIGKILL after SECONDS unless it ended by then; whether it was killed."""
    try:
        process.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        return True


def wait_for_row(
    example: ExampleProject, slug: str, process: subprocess.Popen[str], limit: float = 60
) -> float:
    """Seconds until the command registered SLUG (or ended)."""
    started = time.monotonic()
    while slug not in example.registry() and process.poll() is None:
        if time.monotonic() - started > limit:
            raise AssertionError(f"{slug} was not registered within {limit} s")
        time.sleep(0.005)
    return time.monotonic() - started


def assert_registry_matches_servers(example: ExampleProject) -> dict[str, tuple[str, str, str]]:
    registry = example.registry()
    on_servers = example.tenant_databases()
    template_and_spare = {"example_tenant__template", "example_tenant__spare_1"}
    for server, databases in on_servers.items():
        registered = {db for _, srv, db in registry.values() if srv == server}
        assert databases - template_and_spare == registered, f"orphans or missing on {server}"
    return registry


def test_provisioning_killed_at_random_points_is_finished_by_a_rerun(example):
    rng = random.Random(SEED)
    server = other_server(example)

    def create(slug: str):
        return example.popen("create_tenant", slug, "--server", server, "--domain", f"{slug}.x")

    # How long provisioning takes once the tenant is registered: the window to kill in.
    probe = create("probe")
    wait_for_row(example, "probe", probe)
    registered = time.monotonic()
    while example.registry()["probe"][0] != "active":
        assert probe.poll() is None, "provisioning the probe tenant failed"
        time.sleep(0.002)
    window = time.monotonic() - registered
    assert probe.wait(timeout=120) == 0

    left_as = Counter()
    for number in range(KILLS):
        slug = f"crash-{number}"
        process = create(slug)
        wait_for_row(example, slug, process)
        killed = kill_at(process, rng.uniform(0, window))
        status, _, database = example.registry()[slug]
        in_database = database in example.tenant_databases()[server]
        left_as[(killed, status, in_database)] += 1
        example.manage("create_tenant", slug, "--server", server, "--domain", f"{slug}.x")

    print(f"\nkilled provisioning left (killed, status, database exists): {dict(left_as)}")
    registry = assert_registry_matches_servers(example)
    for number in range(KILLS):
        assert registry[f"crash-{number}"][0] == "active"
    # Each one serves, on its own database, and has its tables.
    counts = example.manage(
        "tenant_command",
        "--all-tenants",
        "shell",
        "-c",
        "from example_project.projects.models import Task; print(Task.objects.count())",
    )
    assert counts.split().count("0") >= KILLS
    assert not list((example.data_dir / "tenants").glob(".*.sqlite3.*")), "partial copies left"


def test_migrate_tenants_killed_at_random_points_is_finished_by_a_rerun(example):
    rng = random.Random(SEED)
    server = other_server(example)
    slugs = [f"fleet-{n:02d}" for n in range(FLEET)]
    example.shell(
        "from tenancy.provisioning import create_tenant\n"
        f"for slug in {slugs!r}:\n"
        f"    create_tenant(slug, server={server!r})\n"
    )

    def unmigrate() -> None:  # every tenant has the example app's migration to apply
        example.manage("tenant_command", "--all-tenants", "migrate", "projects", "zero")

    # Kill between the end of start-up (a run with nothing to do) and the end of a run
    # that migrates every tenant.
    started = time.monotonic()
    example.manage("migrate_tenants")
    start_up = time.monotonic() - started
    unmigrate()
    started = time.monotonic()
    example.manage("migrate_tenants")
    full_run = time.monotonic() - started

    kills = 0
    for _ in range(MIGRATE_KILLS):
        unmigrate()
        process = example.popen("migrate_tenants", "--jobs", "2")
        kills += kill_at(process, rng.uniform(0.8 * start_up, full_run))
        summary = example.manage("migrate_tenants", "--jobs", "2")  # the re-run, no waiting
        assert "0 failed" in summary, summary
    assert example.popen("migrate_tenants", "--check").wait(timeout=120) == 0
    print(f"\nmigrate_tenants killed {kills} of {MIGRATE_KILLS} times, each re-run finished")
    assert kills > 0
    registry = assert_registry_matches_servers(example)
    assert {status for status, _, _ in registry.values()} == {"active"}
