"""Hierarchy JSON files shipped with nbdt (a package so that importlib.resources finds them)."""
