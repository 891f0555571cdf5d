"""The package version (its own module, so that any layer may read it without importing
the package root, which loads the CLI)."""

__version__ = "0.1.0"
