"""Read replicas without a replica: which statements count as writes, and the settings."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from tenancy.conf import _validated_server
from tenancy.connections import replica_settings
from tenancy.replicas import only_reads

POSTGRESQL = {"ENGINE": "django.db.backends.postgresql", "HOST": "primary"}


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT 1",
        " select a from b for update",
        "/* tenant=acme */ SELECT * FROM tenantapp_note",
        "EXPLAIN SELECT 1",
        "SELECT into_date FROM t",
        "SAVEPOINT s1",
        "SET search_path = x",
        "SELECT 1;",
    ],
)
def test_statements_that_only_read(statement):
    assert only_reads(statement)


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO x VALUES (1)",
        "/* a comment */ INSERT INTO t (a) VALUES (1)",
        "UPDATE t SET a = 1",
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        "SELECT * INTO t2 FROM t",
        "EXPLAIN ANALYZE DELETE FROM t",
        "SELECT 1; DELETE FROM t",
        "/* a /* b */ SELECT */ DELETE FROM t",
        "SELECT 1 -- \nDELETE FROM t",
        "CREATE TABLE t (id int)",
        b"SELECT 1",  # not text: taken for a write
    ],
)
def test_statements_taken_for_writes(statement):
    assert not only_reads(statement)


@pytest.mark.parametrize(
    ("replica", "message"),
    [
        ({"HOST": "a,b"}, "several hosts"),
        ({"HOST": "r", "OPTIONS": {"load_balance_hosts": "random"}}, "'load_balance_hosts'"),
        ({"HOST": "r", "OPTIONS": {"target_session_attrs": "standby"}}, "'target_session_attrs'"),
        ({"HOST": "r", "OPTIONS": {"host": "other"}}, "'host'"),
        ({"HOST": "r", "OPTIONS": {" host": "other"}}, "not a plain libpq"),
        ({"HOST": "r", "OPTIONS": {"connect_timeout": 0}}, "connect_timeout 0"),
        ({"NAME": "x"}, "must be a list of dicts of HOST, PORT"),
    ],
)
def test_each_replica_entry_reaches_one_server(replica, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        _validated_server("one", {**POSTGRESQL, "REPLICAS": [replica]})


def test_replicas_are_postgresqls():
    sqlite = {"ENGINE": "django.db.backends.sqlite3", "DIRECTORY": "/tmp", "REPLICAS": []}
    with pytest.raises(ImproperlyConfigured, match="only a PostgreSQL server has"):
        _validated_server("one", sqlite)


def test_a_replica_keeps_its_own_timeout_and_none_of_the_servers_choices():
    database = {
        **POSTGRESQL,
        "NAME": "tenant_acme",
        "OPTIONS": {
            "connect_timeout": 30,
            "target_session_attrs": "read-write",
            "sslmode": "require",
        },
    }
    settings = replica_settings(database, {"HOST": "replica", "PORT": "5433"})
    assert settings["HOST"] == "replica"
    assert settings["NAME"] == "tenant_acme"
    assert settings["OPTIONS"] == {"connect_timeout": 2, "sslmode": "require"}
    own = replica_settings(database, {"HOST": "replica", "OPTIONS": {"connect_timeout": 5}})
    assert own["OPTIONS"]["connect_timeout"] == 5


def test_a_full_save_of_an_older_instance_keeps_the_recorded_position(alpha):
    from tenancy.models import Tenant

    older = Tenant.objects.get(pk=alpha.pk)
    Tenant.objects.filter(pk=alpha.pk).update(ready_lsn="0/3000060:one:test_tenancy_alpha")
    older.name = "Renamed"
    older.save()  # read before the position was recorded
    stored = Tenant.objects.get(pk=alpha.pk)
    assert (stored.name, stored.ready_lsn) == ("Renamed", "0/3000060:one:test_tenancy_alpha")
