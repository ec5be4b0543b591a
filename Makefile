.PHONY: demo test docs soak lint format clean bench

# Set up the example project on SQLite, create two demo tenants and serve it.
demo:
	scripts/demo

# Every check and test: ruff, mypy, pytest on PostgreSQL and SQLite, Django 5.2 and 6.
test:
	scripts/test

# The documentation site, into docs/_build/html (make test builds it too, warnings as errors).
docs:
	scripts/venv .venv "$$(scripts/find-python 3.11 || command -v python3)" "django>=5.2,<6" dev
	.venv/bin/python -m sphinx -W --keep-going -E -q -b html docs docs/_build/html
	@echo "docs: docs/_build/html/index.html"

# The reliability suite at a larger size (10,000 requests per web server, 25 kills per
# command), on PostgreSQL; prints its figures.
soak:
	scripts/venv .venv "$$(scripts/find-python 3.11 || command -v python3)" "django>=5.2,<6" dev
	TENANCY_TEST_BACKEND=postgresql TENANCY_LOAD_REQUESTS=10000 TENANCY_CRASH_KILLS=25 \
		scripts/with-postgres -n 2 .venv/bin/python -m pytest -s -m reliability tests/reliability

# Benchmarks against the alternatives, printed side by side (see benchmarks/README.md).
bench:
	scripts/venv .venv "$$(scripts/find-python 3.11 || command -v python3)" "django>=5.2,<6" dev
	scripts/with-postgres -n 1 .venv/bin/python benchmarks/migrations.py
	.venv/bin/python benchmarks/request_cost.py
	scripts/with-postgres -n 1 .venv/bin/python benchmarks/routing.py
	scripts/with-postgres -n 1 .venv/bin/python benchmarks/tenant_tests.py
	scripts/with-postgres -n 1 .venv/bin/python benchmarks/request_path.py  # makes .venv-bench
	scripts/with-postgres -n 2 .venv/bin/python benchmarks/moving.py
	scripts/with-postgres -n 2 .venv/bin/python benchmarks/backups.py
	TENANCY_PG_MAX_CONNECTIONS=2500 scripts/with-postgres -n 1 --replica \
		.venv/bin/python benchmarks/connections.py --requests 2000

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy tenancy

format:
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

clean:
	rm -rf .venv .venv-django6 .venv-bench var docs/_build .mypy_cache .ruff_cache .pytest_cache
