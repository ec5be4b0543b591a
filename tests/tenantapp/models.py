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
