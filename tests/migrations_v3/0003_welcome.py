"""The tenant app's migrations plus one: a data migration after the current ones."""

from django.db import migrations


def add_welcome_note(apps, schema_editor):
    apps.get_model("tenantapp", "Note").objects.create(text="welcome")


class Migration(migrations.Migration):
    dependencies = [("tenantapp", "0002_label_attachment")]

    operations = [migrations.RunPython(add_welcome_note, migrations.RunPython.noop)]
