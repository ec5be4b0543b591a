# The same first migration as the app's own.
import importlib

Migration = importlib.import_module("tests.sharedapp.migrations.0001_initial").Migration
