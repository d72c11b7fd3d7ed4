"""A module outside the scoped test client's reach, so its 403 is shown whatever other modules exist."""
