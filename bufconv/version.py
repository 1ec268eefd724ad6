"""The package's version, recorded in every file it writes (`bufconv_version`).

A module of its own so that the stages read it without importing the package's front door
(`bufconv/__init__.py` loads every stage lazily: a stage importing it would close a circle).
"""

__version__ = "0.1.0"
