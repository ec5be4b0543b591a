from django.db import migrations


def fail(apps, schema_editor):
    raise RuntimeError("the main database migration fails")


class Migration(migrations.Migration):
    dependencies = [("sharedapp", "0001_initial")]

    operations = [migrations.RunPython(fail, migrations.RunPython.noop)]
