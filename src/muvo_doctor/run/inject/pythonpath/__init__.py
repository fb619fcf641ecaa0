"""Marks this folder as package data; it is put on the child's PYTHONPATH, never imported as a package."""
