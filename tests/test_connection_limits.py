"""How many tenant connections a process holds, and when they are closed."""

import gc
import io
import json
import random
import threading
import time
import weakref

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_started
from django.db import connections
from django.test import Client

from tenancy import atomic, connection_cap, tenant_connection, tenant_context
from tenancy import connections as connections_module
from tenancy.connections import (
    alias_for,
    attached_aliases,
    close_all,
    close_old_connections,
    open_connection_count,
    register,
    registered_aliases,
    snapshot,
)
from tenancy.exceptions import ConnectionLimitReached
from tenancy.provisioning import create_tenant
from tests.conftest import client_sessions, make_tenant
from tests.settings import BACKEND
from tests.tenantapp.models import Note

FLEET_SIZE = 4


@pytest.fixture
def fleet(db_access):
    """Four provisioned tenants on server "one", each with one note naming it."""
    tenants = []
    for i in range(FLEET_SIZE):
        tenant = create_tenant(f"fleet-{i}", domains=[f"fleet-{i}.example.test"])
        with tenant_context(tenant):
            Note.objects.create(text=tenant.slug)
        tenants.append(tenant)
    return tenants


def reset_counters():
    """The cap's counters (refusals, peak) from zero."""
    state = connection_cap._state
    with state.condition:
        state.refused.clear()
        state.peak = len(state.holding)
        state.closed_for_room = 0


@pytest.fixture(autouse=True)
def fresh_counters():
    reset_counters()


def limits(settings, *, conn_max_age=0, **values):
    servers = {
        name: {**server, "CONN_MAX_AGE": conn_max_age}
        for name, server in settings.TENANCY["SERVERS"].items()
    }
    settings.TENANCY = {**settings.TENANCY, "SERVERS": servers, **values}


def serve(client, tenant):
    response = client.get("/notes/", HTTP_HOST=f"{tenant.slug}.example.test")
    assert response.status_code == 200
    assert response.json() == {"notes": [tenant.slug]}


def configured_tenant_aliases():
    return [alias for alias in connections.settings if alias.startswith("tenant:")]


def server_sessions(tenants, settle_to=None):
    """Connections clients hold to these tenants' databases (PostgreSQL), on one server."""
    [server] = {tenant.server for tenant in tenants}
    return client_sessions(server, [tenant.database_name for tenant in tenants], settle_to)


def test_requests_leave_nothing_behind_with_djangos_default_conn_max_age(client, fleet):
    for _ in range(2):
        for tenant in fleet:
            serve(client, tenant)
            assert attached_aliases() == []
            assert open_connection_count() == 0
    assert len(registered_aliases()) == FLEET_SIZE
    assert configured_tenant_aliases() == []


def test_persistent_connections_stay_under_the_cap(client, fleet, settings):
    limits(settings, conn_max_age=None, MAX_OPEN_CONNECTIONS=2)
    for served, tenant in enumerate(fleet, start=1):
        serve(client, tenant)
        recent = fleet[max(0, served - 2) : served]
        assert sorted(attached_aliases()) == sorted(alias_for(t) for t in recent)
        assert open_connection_count() == len(recent)
        if BACKEND == "postgresql":
            assert server_sessions(fleet, settle_to=len(recent)) == len(recent)
    # A connection kept open is reused by the next request for its tenant...
    kept = connections[alias_for(fleet[-1])].connection
    serve(client, fleet[-1])
    assert connections[alias_for(fleet[-1])].connection is kept
    # ...and every tenant still works when it comes back.
    for tenant in fleet:
        serve(client, tenant)
        assert open_connection_count() <= 2
    assert configured_tenant_aliases() == []


def test_a_loop_over_tenants_outside_requests_stays_under_the_cap(fleet, settings):
    limits(settings, MAX_OPEN_CONNECTIONS=2)
    for tenant in fleet * 2:
        with tenant_context(tenant):
            assert list(Note.objects.values_list("text", flat=True)) == [tenant.slug]
        assert open_connection_count() <= 2
        if BACKEND == "postgresql":
            assert server_sessions(fleet) <= 2


def refused(tenant):
    """Reaching ``tenant`` needs a connection the cap refuses."""
    with pytest.raises(ConnectionLimitReached) as caught, tenant_context(tenant):
        Note.objects.count()
    message = str(caught.value)
    assert f"Tenant {tenant.slug!r} cannot get a database connection" in message
    assert "MAX_OPEN_CONNECTIONS" in message
    return message


def test_a_connection_inside_a_transaction_is_never_closed_for_the_cap(alpha, beta, settings):
    limits(settings, conn_max_age=None, MAX_OPEN_CONNECTIONS=1, CONNECTION_WAIT_TIMEOUT=0.2)
    with tenant_context(alpha), atomic():
        Note.objects.create(text="before")
        assert "holds 1 tenant connection" in refused(beta)
        assert open_connection_count() == 1
        Note.objects.create(text="after")
    with tenant_context(beta):  # alpha's is idle now: closed to make room
        assert Note.objects.count() == 0
    assert attached_aliases() == [alias_for(beta)]
    with tenant_context(alpha):
        assert Note.objects.filter(text__in=["before", "after"]).count() == 2


def hold_transaction(connection, hold):
    """Open a transaction on ``connection`` outside atomic(), as ``hold`` says."""
    if hold == "autocommit off":
        connection.set_autocommit(False)
    else:
        with connection.cursor() as cursor:
            cursor.execute("BEGIN")


def commit_transaction(connection, hold):
    if hold == "autocommit off":
        connection.commit()
        connection.set_autocommit(True)
    else:
        with connection.cursor() as cursor:
            cursor.execute("COMMIT")


@pytest.mark.parametrize("hold", ["autocommit off", "BEGIN by hand"])
def test_a_transaction_outside_atomic_is_never_closed_for_the_cap(alpha, beta, settings, hold):
    limits(settings, conn_max_age=None, MAX_OPEN_CONNECTIONS=1, CONNECTION_WAIT_TIMEOUT=0.2)
    with tenant_context(alpha):
        connection = tenant_connection()
        hold_transaction(connection, hold)
        Note.objects.create(text="not committed yet")
    refused(beta)
    assert open_connection_count() == 1
    with tenant_context(alpha):
        commit_transaction(connection, hold)
    with tenant_context(beta):  # now alpha's may be closed for room
        assert Note.objects.count() == 0
    assert open_connection_count() == 1
    with tenant_context(alpha):
        assert list(Note.objects.values_list("text", flat=True)) == ["not committed yet"]


def test_a_connection_with_an_unfinished_iterator_is_never_closed_for_the_cap(
    alpha, beta, settings
):
    limits(settings, conn_max_age=None, MAX_OPEN_CONNECTIONS=1, CONNECTION_WAIT_TIMEOUT=0.1)
    with tenant_context(alpha):
        Note.objects.bulk_create([Note(text=text) for text in ("a1", "a2", "a3")])
    # Behind PgBouncer the iterator fetches every row at once (no server-side cursor):
    # nothing is left to lose, and the connection may be closed.
    holds_cursor = not connections["default"].settings_dict.get("DISABLE_SERVER_SIDE_CURSORS")
    seen = []
    with tenant_context(alpha):
        for note in Note.objects.order_by("text").iterator(chunk_size=1):
            if holds_cursor:
                refused(beta)
            else:
                with tenant_context(beta):
                    Note.objects.count()
            close_old_connections()  # a safe point
            seen.append(note.text)
    assert seen == ["a1", "a2", "a3"]
    with tenant_context(beta):  # the loop is done: room is made
        Note.objects.count()
    assert open_connection_count() == 1


def test_a_connection_with_a_raw_loop_or_cursor_being_fetched_is_never_closed_for_the_cap(
    alpha, beta, settings
):
    limits(settings, conn_max_age=None, MAX_OPEN_CONNECTIONS=1, CONNECTION_WAIT_TIMEOUT=0.1)
    with tenant_context(alpha):
        Note.objects.bulk_create([Note(text=text) for text in ("a1", "a2", "a3")])
    seen = []
    with tenant_context(alpha):
        query = f"SELECT * FROM {Note._meta.db_table} ORDER BY text"
        for note in Note.objects.raw(query).iterator():
            refused(beta)
            close_old_connections()
            seen.append(note.text)
        with tenant_connection().cursor() as cursor:
            cursor.execute(f"SELECT text FROM {Note._meta.db_table} ORDER BY text")
            while (row := cursor.fetchone()) is not None:
                refused(beta)
                seen.append(row[0])
    assert seen == ["a1", "a2", "a3"] * 2


def test_a_thread_at_work_closes_its_connection_itself_when_another_waits(alpha, beta, settings):
    """A thread outside a request keeps its connection until its next safe point, where it
    closes it for the thread waiting at the cap; nobody closes it underneath."""
    limits(settings, conn_max_age=None, MAX_OPEN_CONNECTIONS=1, CONNECTION_WAIT_TIMEOUT=30)
    opened, asked = threading.Event(), threading.Event()
    seen = {}

    def hold():
        with tenant_context(alpha):
            Note.objects.count()
        wrapper = connections[alias_for(alpha)]
        opened.set()
        assert asked.wait(timeout=60)
        seen["open before its safe point"] = wrapper.connection is not None
        with wrapper.cursor() as cursor:  # still usable: nobody closed it underneath
            cursor.execute("SELECT 1")
        close_old_connections()
        seen["open after its safe point"] = wrapper.connection is not None

    def wait_for_beta():
        with tenant_context(beta):
            seen["beta's notes"] = Note.objects.count()
        close_all()

    holder = threading.Thread(target=hold)
    holder.start()
    assert opened.wait(timeout=60)
    waiter = threading.Thread(target=wait_for_beta)
    waiter.start()
    deadline = time.monotonic() + 30
    while snapshot().servers[beta.server].waiting == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    asked.set()
    holder.join(timeout=60)
    waiter.join(timeout=60)
    assert seen == {
        "open before its safe point": True,
        "open after its safe point": False,
        "beta's notes": 0,
    }
    assert snapshot().servers[beta.server].refused == 0


def test_an_idle_connection_of_a_thread_between_requests_makes_room(fleet, settings):
    """A thread between requests may have its idle connection closed by a thread that
    needs room; its next request opens a new one, to its own tenant."""
    limits(settings, conn_max_age=None, MAX_OPEN_CONNECTIONS=1, CONNECTION_WAIT_TIMEOUT=30)
    first, second = fleet[0], fleet[1]
    served, go = threading.Event(), threading.Event()
    seen = {}

    def serve_twice():
        client = Client()
        serve(client, first)
        seen["held between requests"] = open_connection_count()
        served.set()
        assert go.wait(timeout=60)
        serve(client, first)  # reconnects: its connection was closed for room
        seen["attached"] = attached_aliases()
        close_all()
        connections.close_all()

    thread = threading.Thread(target=serve_twice)
    thread.start()
    assert served.wait(timeout=60)
    try:
        serve(Client(), second)  # no room: the parked thread's idle connection is closed
        seen["while the other was parked"] = open_connection_count()
    finally:
        go.set()
        thread.join(timeout=60)
    assert seen == {
        "held between requests": 1,
        "while the other was parked": 1,
        "attached": [alias_for(first)],
    }
    assert snapshot().closed_for_room >= 1


def test_a_request_refused_at_the_cap_is_answered_with_503(client, alpha, beta, settings, caplog):
    limits(settings, conn_max_age=None, MAX_OPEN_CONNECTIONS=1, CONNECTION_WAIT_TIMEOUT=0.1)
    with tenant_context(alpha), atomic():
        Note.objects.create(text="held")
        response = client.get("/notes/", HTTP_HOST="beta.example.test")
    assert response.status_code == 503
    assert response["Retry-After"]
    assert b"beta" in response.content
    assert b"held" not in response.content
    [record] = [r for r in caplog.records if "cannot get a database connection" in r.message]
    assert "Tenant 'beta'" in record.message
    assert "1 waiting" in record.message
    assert snapshot().servers[beta.server].refused >= 1


def test_a_server_cap_leaves_other_servers_alone(alpha, beta, gamma, settings):
    limits(settings, conn_max_age=None, CONNECTION_WAIT_TIMEOUT=0.1)
    servers = settings.TENANCY["SERVERS"]
    servers = {**servers, "one": {**servers["one"], "MAX_OPEN_CONNECTIONS": 1}}
    settings.TENANCY = {**settings.TENANCY, "SERVERS": servers}
    assert {alpha.server, beta.server, gamma.server} == {"one", "two"}
    on_one = [t for t in (alpha, beta, gamma) if t.server == "one"]
    on_two = [t for t in (alpha, beta, gamma) if t.server == "two"]
    with tenant_context(on_one[0]), atomic():
        Note.objects.count()
        for tenant in on_two:
            with tenant_context(tenant):
                Note.objects.count()
        message = refused(on_one[1]) if len(on_one) > 1 else None
    if message is not None:
        assert "server 'one'" in message
        assert "TENANCY['SERVERS']['one']['MAX_OPEN_CONNECTIONS']" in message
    state = snapshot()
    assert state.servers["one"].cap == 1
    assert state.servers["one"].open <= 1


def test_many_threads_at_random_never_exceed_the_cap(fleet, settings):
    """Eight threads serve requests for tenants at random; the connections open in the
    process, counted by tenancy and by the server, never exceed the cap."""
    cap = 2
    limits(settings, conn_max_age=None, MAX_OPEN_CONNECTIONS=cap, CONNECTION_WAIT_TIMEOUT=30)
    close_all()  # what making the fleet left open
    reset_counters()
    done, errors, samples = threading.Event(), [], []

    def monitor():
        while not done.is_set():
            samples.append(open_connection_count())
            if BACKEND == "postgresql":
                samples.append(server_sessions(fleet))
            time.sleep(0.002)

    def work(seed):
        client, pick = Client(), random.Random(seed).choice
        try:
            for _ in range(25):
                serve(client, pick(fleet))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            close_all()
            connections.close_all()

    watcher = threading.Thread(target=monitor)
    watcher.start()
    workers = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    done.set()
    watcher.join(timeout=60)
    assert errors == []
    assert max(samples) <= cap
    assert 0 < snapshot().peak <= cap
    assert snapshot().servers["one"].refused == 0


def test_idle_connections_are_closed_after_the_timeout(alpha, beta, settings):
    limits(settings, conn_max_age=None, IDLE_CONNECTION_TIMEOUT=0.2)
    idle, busy = alpha, beta
    with tenant_context(idle):
        Note.objects.count()
    time.sleep(0.3)
    with tenant_context(busy):
        Note.objects.count()
    close_old_connections()
    assert attached_aliases() == [alias_for(busy)]


def test_djangos_conn_max_age_applies_to_tenant_connections(alpha, settings):
    limits(settings, conn_max_age=60)
    with tenant_context(alpha):
        Note.objects.count()
    wrapper = connections[alias_for(alpha)]
    close_old_connections()
    assert wrapper.connection is not None
    wrapper.close_at = time.monotonic() - 1  # as if it had been open for a minute
    close_old_connections()
    assert wrapper.connection is None
    assert attached_aliases() == []


def test_query_log_is_reset_at_the_start_of_each_request(alpha, settings):
    limits(settings, conn_max_age=None)
    with tenant_context(alpha):
        wrapper = connections[alias_for(alpha)]
        wrapper.force_debug_cursor = True
        Note.objects.count()
    assert len(wrapper.queries_log) == 1
    request_started.send(sender=None)
    assert len(wrapper.queries_log) == 0


def wsgi_get(host, path="/notes/"):
    """One request through Django's WSGI handler, as a WSGI server sends it."""
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "SERVER_NAME": host,
        "SERVER_PORT": "80",
        "HTTP_HOST": host,
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
    }
    statuses = []
    response = WSGIHandler()(environ, lambda status, headers: statuses.append(status))
    try:
        return statuses[0], b"".join(response)
    finally:
        response.close()


def test_djangos_request_work_on_its_own_databases_is_unchanged(fleet, monkeypatch):
    default = connections["default"]
    closed = []
    close = default.close

    def counting_close():
        closed.append(default.alias)
        close()

    # The SQLite test database lives in memory, where Django ignores close(): count calls.
    monkeypatch.setattr(default, "close", counting_close)
    status, body = wsgi_get("fleet-0.example.test")
    assert status == "200 OK"
    assert json.loads(body) == {"notes": ["fleet-0"]}
    # Django closed its own connection at the start and the end of the request
    # (CONN_MAX_AGE = 0), tenancy the tenant's.
    assert closed == ["default", "default"]
    assert attached_aliases() == []


def test_registering_thousands_of_tenants_adds_nothing_to_djangos_databases(db_access):
    configured = dict(connections.settings)
    for i in range(2000):
        register(make_tenant(f"many-{i}", "one"))
    assert len(registered_aliases()) == 2000
    assert dict(connections.settings) == configured
    assert [c.alias for c in connections.all(initialized_only=True)] == ["default"]


def test_a_connection_object_kept_across_requests_is_closed_by_its_thread(alpha, beta, settings):
    """A connection object kept from an earlier request, used beside the one made
    meanwhile, becomes the thread's again: its safe points close it and its place is
    given back."""
    limits(settings, conn_max_age=0, MAX_OPEN_CONNECTIONS=1, CONNECTION_WAIT_TIMEOUT=0.2)
    with tenant_context(alpha):
        kept = tenant_connection()
        Note.objects.count()
    close_old_connections()  # the end of a request: closed and forgotten
    with tenant_context(alpha):
        Note.objects.count()  # a new connection object
        with kept.cursor() as cursor:  # the kept one replaces it
            cursor.execute("SELECT 1")
        assert attached_aliases() == [alias_for(alpha)]
        assert connections[alias_for(alpha)] is kept
    close_old_connections()
    assert kept.connection is None
    with tenant_context(beta):
        assert Note.objects.count() == 0
    assert snapshot().open == 1


def test_the_connections_of_an_ended_thread_are_left_to_the_garbage_collector(alpha, settings):
    limits(settings, conn_max_age=None)
    made = {}

    def work():
        with tenant_context(alpha):
            Note.objects.count()
        made["wrapper"] = weakref.ref(connections[alias_for(alpha)])

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    gc.collect()
    assert made["wrapper"]() is None
    assert snapshot().servers[alpha.server].open == 0
    if BACKEND == "postgresql":
        assert server_sessions([alpha], settle_to=0) == 0


def test_places_go_to_waiting_threads_in_turn(alpha, beta, settings):
    """A thread that takes and gives back the only place in a loop does not keep a
    waiting thread out: the place goes to the thread that waits."""
    limits(settings, conn_max_age=0, MAX_OPEN_CONNECTIONS=1, CONNECTION_WAIT_TIMEOUT=30)
    stop, looped = threading.Event(), threading.Event()

    def busy():
        while not stop.is_set():
            with tenant_context(alpha):
                Note.objects.count()
                looped.set()
                time.sleep(0.005)
            close_old_connections()  # CONN_MAX_AGE = 0: closed, the place given back
        close_all()
        connections.close_all()

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        assert looped.wait(timeout=60)
        with tenant_context(beta):
            assert Note.objects.count() == 0
        close_old_connections()  # the place goes back to the looping thread
    finally:
        stop.set()
        thread.join(timeout=60)
    assert sum(server.refused for server in snapshot().servers.values()) == 0


def test_a_pooled_connection_is_not_waited_for_when_it_goes_back_to_its_pool(alpha, settings):
    limits(settings, conn_max_age=0)
    with tenant_context(alpha):
        Note.objects.count()
        use = connections_module._thread.uses[alias_for(alpha)]
        pooled = {**use.wrapper.settings_dict, "OPTIONS": {"pool": {"min_size": 1}}}
        unpooled_watch = connection_cap.session_end_watch(use)
        unpooled, use.wrapper.settings_dict = use.wrapper.settings_dict, pooled
        try:
            assert connection_cap.session_end_watch(use) is None
        finally:
            use.wrapper.settings_dict = unpooled
    if BACKEND == "postgresql":
        assert unpooled_watch is not None
        unpooled_watch.close()
    else:
        assert unpooled_watch is None  # SQLite: no server session
