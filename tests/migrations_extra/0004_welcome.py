from django.db import migrations


def add_welcome_note(apps, schema_editor):
    apps.get_model("tenantapp", "Note").objects.create(text="welcome")


class Migration(migrations.Migration):
    dependencies = [("tenantapp", "0003_extra")]
    operations = [migrations.RunPython(add_welcome_note, migrations.RunPython.noop)]
