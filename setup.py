"""Build script. Project metadata lives in pyproject.toml; this file only adds the torch extension."""
from setuptools import setup

setup()
