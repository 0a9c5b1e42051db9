"""python/lowbit/_version.py: lowbit's version, in a module of its own so that any module can
import it without importing the package root (pyproject.toml holds the same string)."""
__version__ = "0.1.0"
