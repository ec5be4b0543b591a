from django.db import migrations, models

from tenancy import require_tenant


def fail_for_beta(apps, schema_editor):
    if require_tenant().slug.startswith("beta"):
        raise RuntimeError("this migration fails for beta")


class Migration(migrations.Migration):
    dependencies = [("tenantapp", "0001_initial")]

    operations = [
        migrations.AddIndex("note", models.Index(fields=["text"], name="note_text_idx")),
        migrations.RunPython(fail_for_beta, migrations.RunPython.noop),
    ]
