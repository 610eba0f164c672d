"""The accountant's version, recorded in every certificate it issues."""
__version__ = "0.2.0"
