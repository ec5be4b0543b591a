"""manage.py pgbouncer_config: a PgBouncer configuration from a server entry."""

import configparser
import io

import pytest
from django.core.management import CommandError, call_command

from tests.conftest import pgbouncer_console
from tests.settings import BACKEND, CONNECTION_BUDGET, PGBOUNCER


def pooled_server(**extra):
    return {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": "pooler.internal",
        "PORT": "6432",
        "USER": "app",
        "DIRECT": {"HOST": "db1.internal", "PORT": "5433"},
        "TRANSACTION_POOLING": True,
        **extra,
    }


def generate(settings, server, *args):
    settings.TENANCY = {
        **settings.TENANCY,
        "SERVERS": {**settings.TENANCY["SERVERS"], "pooled": server},
    }
    out = io.StringIO()
    call_command("pgbouncer_config", "pooled", *args, stdout=out)
    config = configparser.ConfigParser(delimiters=("=",), comment_prefixes=(";",))
    config.read_string(out.getvalue())
    return config


def test_the_configuration_sends_every_database_to_the_server_and_caps_the_fleet(settings):
    config = generate(settings, pooled_server(CONNECTION_BUDGET=90))
    assert dict(config["databases"]) == {"*": "host=db1.internal port=5433"}
    bouncer = config["pgbouncer"]
    assert (bouncer["listen_addr"], bouncer["listen_port"]) == ("pooler.internal", "6432")
    assert bouncer["pool_mode"] == "transaction"
    assert bouncer["max_user_connections"] == "90"
    assert bouncer["default_pool_size"] == bouncer["max_db_connections"] == "5"


def test_options_override_the_entry_and_a_pool_never_exceeds_the_budget(settings):
    config = generate(
        settings,
        pooled_server(TRANSACTION_POOLING=False, CONNECTION_BUDGET=90),
        "--budget",
        "3",
        "--pool-size",
        "10",
        "--auth-type",
        "scram-sha-256",
        "--auth-file",
        "/etc/pgbouncer/userlist.txt",
    )
    bouncer = config["pgbouncer"]
    assert bouncer["pool_mode"] == "session"
    assert bouncer["max_user_connections"] == "3"
    assert bouncer["default_pool_size"] == "3"
    assert bouncer["auth_file"] == "/etc/pgbouncer/userlist.txt"


def test_the_file_is_written_whole(settings, tmp_path):
    target = tmp_path / "pgbouncer.ini"
    target.write_text("old")
    generate(settings, pooled_server(), "--output", str(target))
    assert target.read_text().startswith("; PgBouncer for tenancy server 'pooled'")
    assert [path.name for path in tmp_path.iterdir()] == ["pgbouncer.ini"]


def test_a_server_reached_directly_is_refused_with_the_fix(settings):
    direct = {key: value for key, value in pooled_server().items() if key != "DIRECT"}
    with pytest.raises(CommandError, match="reached directly: point its HOST and PORT"):
        generate(settings, direct)
    with pytest.raises(CommandError, match="There is no server 'nowhere'"):
        call_command("pgbouncer_config", "nowhere")


@pytest.mark.skipif(not PGBOUNCER, reason="runs in the suite's PgBouncer run")
def test_the_suites_pgbouncer_runs_with_the_generated_configuration():
    assert BACKEND == "postgresql"
    with pgbouncer_console("one") as console:
        rows = console.execute("SHOW CONFIG").fetchall()
    values = {row[0]: row[1] for row in rows}
    assert values["max_user_connections"] == str(CONNECTION_BUDGET)
    assert values["pool_mode"] == "transaction"
    assert values["default_pool_size"] == "20"
    assert values["server_idle_timeout"] == "60"
