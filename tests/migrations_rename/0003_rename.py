from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("tenantapp", "0002_label_attachment")]
    operations = [migrations.RenameModel("Attachment", "Enclosure")]
