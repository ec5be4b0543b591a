from django.db import models


class Note(models.Model):
    """The tenant model the benchmarked view reads by primary key."""

    title = models.CharField(max_length=100)

    def __str__(self) -> str:
        return self.title
