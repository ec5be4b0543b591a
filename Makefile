.PHONY: demo test lint format clean

# Set up the example project on SQLite, create two demo tenants and serve it.
demo:
	scripts/demo

# Every check and test: ruff, mypy, pytest on PostgreSQL and SQLite, Django 5.2 and 6.
test:
	scripts/test

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy tenancy

format:
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

clean:
	rm -rf .venv .venv-django6 var .mypy_cache .ruff_cache .pytest_cache
