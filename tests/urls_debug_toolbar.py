"""The test URLconf with django-debug-toolbar's URLs (tests/test_debug_toolbar.py)."""

from debug_toolbar.toolbar import debug_toolbar_urls

from tests.urls import urlpatterns as test_urlpatterns

urlpatterns = [*test_urlpatterns, *debug_toolbar_urls()]
