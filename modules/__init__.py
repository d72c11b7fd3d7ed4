"""Each folder here is a module mounted at /<folder>/ from its routes.py."""
