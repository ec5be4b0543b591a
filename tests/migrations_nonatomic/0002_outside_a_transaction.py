from django.db import migrations


def must_run_outside_a_transaction(apps, schema_editor):
    # What CREATE INDEX CONCURRENTLY needs on PostgreSQL.
    if schema_editor.connection.in_atomic_block:
        raise RuntimeError("a non-atomic migration ran inside a transaction")


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("tenantapp", "0001_initial")]

    operations = [migrations.RunPython(must_run_outside_a_transaction, migrations.RunPython.noop)]
