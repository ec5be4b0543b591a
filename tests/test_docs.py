"""The reference names everything a user can meet: each system check, setting, management
command and signal of the code (the site itself is built by `make test`, warnings as
errors, so a broken link fails too)."""

import re
from pathlib import Path

import pytest
from django.dispatch import Signal

import tenancy.signals
from tenancy.conf import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"


def code_of(package: str) -> str:
    return "\n".join(path.read_text() for path in (ROOT / package).rglob("*.py"))


def test_every_system_check_is_in_the_reference():
    in_code = set(re.findall(r'id="(tenancy\.[EW]\d{3})"', code_of("tenancy")))
    in_docs = set(re.findall(r"`(tenancy\.[EW]\d{3})`", (REFERENCE / "checks.md").read_text()))
    assert len(in_code) >= 15
    assert in_code == in_docs


def test_every_setting_is_in_the_reference():
    table = (REFERENCE / "settings.md").read_text()
    missing = [key for key in DEFAULTS if f"| `{key}` |" not in table]
    assert not missing


def test_every_command_is_in_the_reference():
    commands = ROOT / "tenancy" / "management" / "commands"
    names = {path.stem for path in commands.glob("*.py") if not path.stem.startswith("_")}
    text = (REFERENCE / "commands.md").read_text()
    assert {"create_tenant", "migrate_tenants"} <= names
    assert not [name for name in sorted(names) if f"### `{name}`" not in text]


@pytest.mark.parametrize(
    "name", [name for name, value in vars(tenancy.signals).items() if isinstance(value, Signal)]
)
def test_every_signal_is_in_the_reference(name):
    assert f"`{name}`\n: " in (REFERENCE / "signals.md").read_text()
