"""SQL of the slow module."""
SLEEP = 'SELECT pg_sleep(%(seconds)s)'
