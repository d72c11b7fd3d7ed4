"""The example module."""
