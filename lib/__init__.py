"""The dbapi framework: modules import from here, never the reverse."""
