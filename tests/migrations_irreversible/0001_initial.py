# The same first migration as the app's own.
import importlib

Migration = importlib.import_module("tests.tenantapp.migrations.0001_initial").Migration
