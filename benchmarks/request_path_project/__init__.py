"""The project of benchmarks/request_path.py: one view, served by plain Django, django-tenants
and tenancy, each with its own settings module (``settings_plain``, ``settings_django_tenants``,
``settings_tenancy``)."""
