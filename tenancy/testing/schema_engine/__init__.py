"""The database backend of a published test tenant that is a schema (see ``base``)."""
