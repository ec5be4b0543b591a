"""One PostgreSQL server stops (immediate shutdown, as in a crash) while the example is
under load: its tenants get 503 with a clear page, the other server's tenants keep working
without a single error, and when the server is back its tenants recover without a restart
of the web server."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.example import ExampleProject, example_project
from tests.reliability.cluster import Cluster
from tests.reliability.load import LoadClient, create_fleet
from tests.settings import BACKEND

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.skipif(BACKEND != "postgresql", reason="stops a PostgreSQL server"),
]

TENANTS = 10  # even ones on the server that stays up ("main"), odd ones on "second"
PHASE = 2.0  # seconds of load before, during and after the outage


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ExampleProject, str, Cluster]]:
    cluster = Cluster()
    try:
        cluster.create()
        directory = tmp_path_factory.mktemp("faults")
        with example_project(directory, second_server=cluster.address) as example:
            example.set_up()
            session_key = example.shell(create_fleet(TENANTS)).split()[-1]
            yield example, session_key, cluster
    finally:
        cluster.remove()


def test_a_stopped_server_takes_only_its_own_tenants_down_and_they_recover(fleet):
    example, session_key, cluster = fleet
    phase = "before"
    answers: Counter[tuple[str, str, int | str]] = Counter()  # (phase, server, status)
    pages: dict[int, bytes] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def load(client: LoadClient, number: int) -> None:
        while not stop.is_set():
            slug = f"load-{number % TENANTS:02d}"
            server = "main" if number % 2 == 0 else "second"
            started_in = phase
            try:
                status, body = client.request("GET", slug, "/api/tasks/")
            except Exception as exc:
                status, body = type(exc).__name__, b""
            # A request that spans a change (in flight as the server stops) is not counted.
            current = started_in if phase == started_in else "changing"
            with lock:
                answers[(current, server, status)] += 1
                if isinstance(status, int):
                    pages.setdefault(status, body)
            number += 2 * 7  # keeps this thread on one server, moves it between tenants

    with example.serve("gunicorn") as port:
        client = LoadClient(port, session_key)
        threads = [threading.Thread(target=load, args=(client, n)) for n in range(8)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(PHASE)
            phase = "stopping"
            cluster.stop()
            phase = "down"
            time.sleep(PHASE)
            phase = "restarting"  # what is in flight while it starts is not counted
            cluster.start()
            time.sleep(1)  # the first request on each old connection finds it broken
            phase = "back"
            time.sleep(PHASE)
        finally:
            stop.set()
            for thread in threads:
                thread.join()

    figures = {key: count for key, count in sorted(answers.items(), key=str)}
    print(f"\nanswers by (phase, server, status): {figures}")
    by = Counter()
    for (when, server, status), count in answers.items():
        by[(when, server, status == 200)] += count
    # The server that stayed up: every request of every phase answered 200.
    for when in ("before", "stopping", "changing", "down", "restarting", "back"):
        assert by[(when, "main", False)] == 0, figures
    assert by[("down", "main", True)] > 0
    # The stopped server's tenants: 503 with a clear page while it is down ...
    assert by[("before", "second", False)] == 0, figures
    down = {status for (when, server, status) in answers if (when, server) == ("down", "second")}
    assert down == {503}, figures
    assert b"is not available right now" in pages[503]
    # ... and served again once it is back, by the same web server processes.
    assert by[("back", "second", False)] == 0, figures
    assert by[("back", "second", True)] > 0
