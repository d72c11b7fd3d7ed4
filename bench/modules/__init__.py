"""Modules only the bench mounts (MODULE_PACKAGES=modules,bench.modules): never part of a deployed gateway."""
