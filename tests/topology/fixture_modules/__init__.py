"""A module that shows what a replica saw of a request that came through nginx."""
