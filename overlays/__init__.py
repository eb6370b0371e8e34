"""The built-in overlay layers (common, master, worker), shipped inside the package as data.

This file only makes the folder a package, so that importlib.resources finds it wherever imagebuilder
is installed; the layers are directories of files and templates, not Python.
"""
