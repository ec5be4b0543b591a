from django.db import migrations

from tenancy import current_tenant


def say_hello(apps, schema_editor):
    # Data of the tenant it runs in: a template database must never run it.
    apps.get_model("tenantapp", "Note").objects.create(text=f"hello {current_tenant().slug}")


class Migration(migrations.Migration):
    dependencies = [("tenantapp", "0001_initial")]

    operations = [migrations.RunPython(say_hello, migrations.RunPython.noop)]
