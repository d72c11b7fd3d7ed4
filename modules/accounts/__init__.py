"""The accounts module."""
