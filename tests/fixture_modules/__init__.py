"""Modules mounted only by the tests (MODULE_PACKAGES includes tests.fixture_modules)."""
