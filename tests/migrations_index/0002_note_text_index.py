from django.db import migrations, models


class Migration(migrations.Migration):
    # Schema only: a template database gets it (a data migration it would leave to
    # each tenant).
    dependencies = [("tenantapp", "0001_initial")]

    operations = [
        migrations.AddIndex("note", models.Index(fields=["text"], name="note_text_idx")),
    ]
