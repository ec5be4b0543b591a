import os
import signal

from django.db import migrations, models

from tenancy import require_tenant


def kill_the_worker_for_beta(apps, schema_editor):
    # Only ever in a worker process of migrate_tenants --jobs, never the test's own.
    if require_tenant().slug.startswith("beta") and str(os.getpid()) != os.environ.get(
        "TENANCY_TEST_PROCESS"
    ):
        os.kill(os.getpid(), signal.SIGKILL)


class Migration(migrations.Migration):
    dependencies = [("tenantapp", "0001_initial")]

    operations = [
        migrations.AddIndex("note", models.Index(fields=["text"], name="note_text_idx")),
        migrations.RunPython(kill_the_worker_for_beta, migrations.RunPython.noop),
    ]
