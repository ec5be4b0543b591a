from django.db import models


class Note(models.Model):
    text = models.CharField(max_length=200)
    author_id = models.BigIntegerField(null=True, help_text="auth.User primary key")

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.text


class Tag(models.Model):
    note = models.ForeignKey(Note, on_delete=models.CASCADE, related_name="tags")
    label = models.CharField(max_length=50)

    def __str__(self) -> str:
        return self.label


class Label(models.Model):
    """Notes through a many-to-many relation."""

    name = models.CharField(max_length=50)
    notes = models.ManyToManyField(Note, related_name="labels")

    def __str__(self) -> str:
        return self.name


class Attachment(models.Model):
    """A note's, through a nullable foreign key: its reverse manager has remove()."""

    name = models.CharField(max_length=50)
    note = models.ForeignKey(
        Note, null=True, on_delete=models.SET_NULL, related_name="attachments"
    )

    def __str__(self) -> str:
        return self.name
