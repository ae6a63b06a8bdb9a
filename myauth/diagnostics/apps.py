from django.apps import AppConfig


class DiagnosticsConfig(AppConfig):
    """Tasks that prove the stack's Celery behaviour (tests, load test). Installed only when
    DIAGNOSTICS_ENABLED=true; never needed in production."""

    name = "diagnostics"
    default_auto_field = "django.db.models.AutoField"
