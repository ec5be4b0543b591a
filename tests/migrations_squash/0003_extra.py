from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("tenantapp", "0002_label_attachment")]
    operations = [
        migrations.CreateModel(
            "Extra", [("id", models.BigAutoField(primary_key=True)), ("x", models.IntegerField())]
        )
    ]
