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
from pathlib import Path

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


def kill_at(process: subprocess.Popen[str], seconds: float, workers_end: bool = False) -> int:
    """SIGKILL after SECONDS unless it ended by then; whether it was killed (a count: 1 +
    the processes it had started, which must end with it when WORKERS_END)."""
    try:
        process.wait(timeout=seconds)
        return 0
    except subprocess.TimeoutExpired:
        workers = child_processes(process.pid)
        process.send_signal(signal.SIGKILL)
        process.wait()
    if workers_end:
        deadline = time.monotonic() + 5
        while any(map(is_running, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(is_running, workers)), "worker processes outlived the command"
    return 1 + len(workers)


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


def child_processes(pid: int) -> list[int]:
    """The processes PID started (Linux's /proc). A thread (or the process) that ends
    while it is read has no children left to count."""
    children = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return []
    for task in tasks:
        try:
            children += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return children


def is_running(pid: int) -> bool:
    """Whether PID exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


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
        killed = bool(kill_at(process, rng.uniform(0, window)))
        status, _, database = example.registry()[slug]
        in_database = database in example.tenant_databases()[server]
        left_as[(killed, status, in_database)] += 1
        example.manage("create_tenant", slug, "--server", server, "--domain", f"{slug}.x")

    print(f"\nkilled provisioning left (killed, status, database exists): {dict(left_as)}")
    # Killed before it finished: a window that let every kill come too late (or none
    # land) would test nothing.
    assert any(killed and status == "provisioning" for killed, status, _ in left_as), left_as
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
    example.manage("migrate_tenants", "--jobs", "2")
    start_up = time.monotonic() - started
    unmigrate()
    started = time.monotonic()
    example.manage("migrate_tenants", "--jobs", "2")
    full_run = time.monotonic() - started

    kills = workers_seen = 0
    for round_ in range(MIGRATE_KILLS + 1):
        unmigrate()
        process = example.popen("migrate_tenants", "--jobs", "2")
        if round_ < MIGRATE_KILLS:  # at a random point
            killed = kill_at(process, rng.uniform(0.8 * start_up, full_run), workers_end=True)
        else:  # and once surely while its workers migrate
            while not child_processes(process.pid) and process.poll() is None:
                time.sleep(0.01)
            killed = kill_at(process, 0, workers_end=True)
        kills += bool(killed)
        workers_seen += max(killed - 1, 0)
        summary = example.manage("migrate_tenants", "--jobs", "2")  # the re-run, no waiting
        assert "0 failed" in summary, summary
    assert workers_seen > 0
    assert example.popen("migrate_tenants", "--check").wait(timeout=120) == 0
    print(
        f"\nmigrate_tenants killed {kills} of {MIGRATE_KILLS + 1} times ({workers_seen} "
        "worker processes ended with it), each re-run finished"
    )
    assert kills > 0
    registry = assert_registry_matches_servers(example)
    assert {status for status, _, _ in registry.values()} == {"active"}


MOVE_KILLS = int(os.environ.get("TENANCY_CRASH_KILLS", "4"))
COUNT_TASKS = "from example_project.projects.models import Task; print(Task.objects.count())"


def test_moves_killed_at_random_points_are_finished_or_undone_by_a_rerun(example):
    """move_tenant back and forth between the two servers, each killed at a random point,
    then run again (to finish it) or with --abort (to undo it): the tenant ends up active
    on exactly one server, with every row, and no database is left that the registry does
    not name."""
    rng = random.Random(SEED + 1)
    slug = "mover"
    example.manage("create_tenant", slug, "--domain", "mover.x")
    example.manage(
        "tenant_command",
        "--tenant",
        slug,
        "shell",
        "-c",
        "from example_project.projects.models import Project, Task\n"
        "project = Project.objects.create(name='moving')\n"
        "Task.objects.bulk_create(Task(project=project, title=f't{n}') for n in range(500))",
    )
    rows = example.manage("tenant_command", "--tenant", slug, "shell", "-c", COUNT_TASKS).split()[
        -1
    ]

    # When a move marks the tenant moving and when it switches: the window to kill in,
    # from a little before the one to a little after the other.
    probe = example.popen("move_tenant", slug, "--server", "second")
    started = time.monotonic()
    while example.registry()[slug][0] != "moving":
        assert probe.poll() is None, "the probe move ended before it marked the tenant"
        time.sleep(0.005)
    marked = time.monotonic() - started
    while example.registry()[slug][0] == "moving":
        time.sleep(0.005)
    switched = time.monotonic() - started
    assert probe.wait(timeout=120) == 0
    example.manage("move_tenant", slug, "--server", "main")

    left_as = Counter()
    for number in range(MOVE_KILLS):
        _, source, _ = example.registry()[slug]
        target = "second" if source == "main" else "main"
        process = example.popen("move_tenant", slug, "--server", target)
        killed = bool(kill_at(process, rng.uniform(marked - 0.1, switched + 0.3)))
        status, server, _ = example.registry()[slug]
        left_as[(killed, status, server)] += 1
        if killed and rng.random() < 0.5:
            aborting = example.popen("move_tenant", slug, "--abort", capture=True)
            output = "".join(aborting.communicate(timeout=120))
            if aborting.returncode:
                # Killed after the switch (it is finished, not undone), or before the move
                # was recorded (nothing to undo; it ran to its end or never started).
                assert "already" in output or "not being moved" in output, output
                if "already" in output:
                    example.manage("move_tenant", slug, "--server", target)
        elif killed:  # as an operator does after a crash: the same command again
            example.manage("move_tenant", slug, "--server", target)
        status, server, _ = example.registry()[slug]
        assert status == "active", (number, status)
        assert_registry_matches_servers(example)
        counted = example.manage(
            "tenant_command", "--tenant", slug, "shell", "-c", COUNT_TASKS
        ).split()
        assert counted[-1] == rows, (number, server, counted)

    print(f"\nkilled moves left (killed, status, server): {dict(left_as)}")
    assert any(killed and status == "moving" for killed, status, _ in left_as), left_as
    example.manage("delete_tenant", slug, "--noinput")


def test_restores_killed_at_random_points_are_finished_or_undone_by_a_rerun(example, tmp_path):
    """restore_tenant --replace, killed at a random point, then run again (to finish it)
    or with --abort (to undo it): the tenant ends up active with the backup's rows (or,
    undone, its own), and no database is left that the registry does not name."""
    rng = random.Random(SEED + 2)
    slug = "restorer"
    example.manage("create_tenant", slug, "--domain", "restorer.x")
    add_tasks = (
        "from example_project.projects.models import Project, Task\n"
        "project, _ = Project.objects.get_or_create(name='restoring')\n"
        "Task.objects.bulk_create(Task(project=project, title=f't{{n}}') for n in range({}))"
    )
    example.manage("tenant_command", "--tenant", slug, "shell", "-c", add_tasks.format(300))
    backup = tmp_path / "restorer.tar"
    example.manage("backup_tenant", slug, "-o", str(backup))

    def count() -> str:
        output = example.manage("tenant_command", "--tenant", slug, "shell", "-c", COUNT_TASKS)
        return output.split()[-1]

    backed_up = count()
    restore = ("restore_tenant", str(backup), "--replace", "--noinput")

    # How long a whole restore takes: the window to kill in.
    started = time.monotonic()
    example.manage(*restore)
    window = time.monotonic() - started
    assert count() == backed_up

    left_as = Counter()
    for number in range(MOVE_KILLS):
        # Rows written after the backup: a finished restore takes them away.
        example.manage("tenant_command", "--tenant", slug, "shell", "-c", add_tasks.format(7))
        live = count()
        database_before = example.registry()[slug][2]
        killed = bool(kill_at(example.popen(*restore), rng.uniform(0.05, window)))
        recorded = example.shell(
            f"from tenancy.models import TenantMove\n"
            f"print(TenantMove.objects.filter(tenant__slug={slug!r}).count())"
        ).split()[-1]
        left_as[(killed, recorded)] += 1
        expected = backed_up
        if killed and rng.random() < 0.5:
            aborting = example.popen("restore_tenant", "--abort", slug, capture=True)
            output = "".join(aborting.communicate(timeout=120))
            if aborting.returncode == 0:
                expected = live  # undone: the tenant keeps its own database
            else:
                # Killed after the switch (finished by running it again), or before it was
                # recorded or after it ended (nothing to undo).
                assert "already" in output or "not being restored" in output, output
                if "already" in output:
                    example.manage(*restore)
                elif example.registry()[slug][2] == database_before:
                    expected = live  # killed before it was recorded: nothing happened
        elif killed:  # as an operator does after a crash: the same command again
            example.manage(*restore)
        status = example.registry()[slug][0]
        assert status == "active", (number, status)
        assert_registry_matches_servers(example)
        assert count() == expected, (number, left_as)

    print(f"\nkilled restores left (killed, records): {dict(left_as)}")
    assert any(killed and recorded == "1" for killed, recorded in left_as), left_as
    example.manage("delete_tenant", slug, "--noinput")
