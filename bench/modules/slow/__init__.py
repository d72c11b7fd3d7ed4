"""A slow caller's action for the bench's "mixed" scenario (issue 11): it holds a pooled connection in pg_sleep."""
