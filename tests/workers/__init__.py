"""Worker modules used by the tests (importable by spawned workers through PYTHONPATH)."""
