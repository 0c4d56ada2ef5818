"""Plain modules the tests import (no tests here): reference loops, browser pages, small models.

``pyproject.toml`` puts ``tests/`` on the path (``pythonpath``), so a test in any folder imports
them as ``from helpers import ...``; fixtures live in the ``conftest.py`` files instead.
"""
