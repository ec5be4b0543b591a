from django.db import migrations, models


def add_welcome_note(apps, schema_editor):
    # No `using=`: relies on migrate_tenants running migrations inside the tenant.
    apps.get_model("tenantapp", "Note").objects.create(text="welcome")


class Migration(migrations.Migration):
    dependencies = [("tenantapp", "0001_initial")]

    operations = [
        migrations.AddIndex("note", models.Index(fields=["text"], name="note_text_idx")),
        migrations.RunPython(add_welcome_note, migrations.RunPython.noop),
    ]
