"""Property-based tests: whatever a client sends as host, tenant header or path prefix,
and whatever a caller passes as a slug, the answer is never a server error, no tenant
model query reaches the main database, and nothing unvalidated reaches SQL."""

from __future__ import annotations

import contextlib
import os
import string

import pytest
from django.core.exceptions import ValidationError
from django.db import DatabaseError, connections, transaction
from django.test.utils import CaptureQueriesContext
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tenancy.backends import get_server
from tenancy.provisioning import create_tenant
from tenancy.validators import is_valid_slug, validate_database_name
from tests.tenantapp.models import Note

EXAMPLES = settings(
    max_examples=100,
    deadline=None,
    # New examples on every local run; the same ones in CI, where a run must be repeatable.
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
# Anything at all, and things that look almost right (the near misses matter most).
anything = st.text(max_size=300)
near_misses = st.from_regex(r"[a-zA-Z0-9._:'\"; -]{0,70}", fullmatch=True)
alpha_variants = st.sampled_from(["alpha", "ALPHA", "alpha ", " alpha", "alpha\x00", "alph"])
untrusted = anything | near_misses | alpha_variants


def tenant_queries_on_default(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if "tenantapp_" in q["sql"]]


def answer(client, path: str, **headers: str) -> tuple[int, list[str]]:
    with CaptureQueriesContext(connections["default"]) as queries:
        response = client.get(path, **headers)
    return response.status_code, tenant_queries_on_default(queries)


@EXAMPLES
@given(host=untrusted | untrusted.map(lambda text: f"{text}.example.test"))
def test_any_host_header(client, alpha, host):
    assume(host.split(":")[0].lower() != "admin.example.test")  # the main site
    status, on_default = answer(client, "/notes/", HTTP_HOST=host)
    assert status in (200, 400, 404)  # 400: Django's own host check
    assert on_default == []


@EXAMPLES
@given(value=untrusted)
def test_any_tenant_header(client, alpha, settings_override, value):
    settings_override(RESOLVER="header")
    assume(value != "")  # no header value: the main site, where /notes/ has no tenant
    status, on_default = answer(client, "/notes/", HTTP_HOST="any.test", HTTP_X_TENANT=value)
    assert status == (200 if value == "alpha" else 404)
    assert on_default == []


@EXAMPLES
@given(segment=untrusted.filter(lambda text: "/" not in text and "?" not in text))
def test_any_path_prefix(client, alpha, settings_override, segment):
    settings_override(RESOLVER="path")
    assume(segment not in ("", ".", ".."))
    status, on_default = answer(client, f"/t/{segment}/notes/")
    assert status in (200, 404)
    assert status != 200 or segment == "alpha"
    assert on_default == []


@EXAMPLES
@given(slug=untrusted)
def test_any_slug_given_to_create_tenant(db_access, slug):
    assume(not is_valid_slug(slug))
    before = set(get_server("one").list_databases())
    with pytest.raises(ValidationError):
        create_tenant(slug)
    assert set(get_server("one").list_databases()) == before


@EXAMPLES
@given(name=untrusted)
def test_a_database_name_reaches_sql_only_when_it_needs_no_quoting(name):
    try:
        validate_database_name(name)
    except ValidationError:
        return
    # Valid names are plain identifiers: lowercase, digits, underscores. They are quoted
    # with psycopg's sql.Identifier all the same.
    assert set(name) <= set(string.ascii_lowercase + string.digits + "_")
    assert not name[0].isdigit()
    assert len(name.encode()) <= 63  # PostgreSQL's limit: never silently truncated


@pytest.fixture
def settings_override(settings):
    def override(**values: object) -> None:
        settings.TENANCY = {**settings.TENANCY, **values}

    return override


def test_no_tenant_model_query_ever_goes_to_the_main_database(client, alpha):
    """The check the tests above rely on can fail: a query on the main database for a
    tenant model is seen."""
    # No such table there: the error rolls the block back and is ignored.
    with (
        CaptureQueriesContext(connections["default"]) as queries,
        contextlib.suppress(DatabaseError),
        transaction.atomic(using="default"),
    ):
        Note.objects.using("default").exists()
    assert tenant_queries_on_default(queries) != []
