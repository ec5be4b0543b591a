"""``{django-command} NAME``: a management command's help and options, read from the
command itself, so the reference cannot drift from the code."""

from __future__ import annotations

from django.core.management import load_command_class
from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective


class DjangoCommand(SphinxDirective):
    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        command = load_command_class("tenancy", name)
        parser = command.create_parser("manage.py", name)
        usage = parser.format_help()  # the command's help, usage and options
        return [nodes.literal_block(usage, usage)]


def setup(app: Sphinx) -> dict[str, object]:
    app.add_directive("django-command", DjangoCommand)
    return {"parallel_read_safe": True}
