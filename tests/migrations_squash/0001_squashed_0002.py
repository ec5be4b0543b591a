import importlib

from django.db import migrations

first = importlib.import_module("tests.tenantapp.migrations.0001_initial").Migration
second = importlib.import_module("tests.tenantapp.migrations.0002_label_attachment").Migration


class Migration(migrations.Migration):
    replaces = [("tenantapp", "0001_initial"), ("tenantapp", "0002_label_attachment")]
    dependencies = list(first.dependencies)
    operations = [*first.operations, *second.operations]
