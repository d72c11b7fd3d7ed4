"""Long actions for the concurrency tests: a statement that runs for as long as the caller asks."""
