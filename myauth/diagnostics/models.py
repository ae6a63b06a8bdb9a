from django.db import models


class TaskRow(models.Model):
    """One row per run of a diagnostics task that writes to the database, as an Alliance Auth
    task writes what it fetched from ESI."""

    label = models.CharField(max_length=200, db_index=True)
    task_id = models.CharField(max_length=36)
    written_at = models.DateTimeField(auto_now_add=True)
