from django.db import migrations


def forwards(apps, schema_editor):
    apps.get_model("tenantapp", "Note").objects.create(text="one way")


class Migration(migrations.Migration):
    """Cannot be unapplied: a backwards migrate stops at it, after it has begun."""

    dependencies = [("tenantapp", "0001_initial")]

    operations = [migrations.RunPython(forwards)]
