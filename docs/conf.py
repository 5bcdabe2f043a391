"""Sphinx configuration; the test command builds these docs with warnings as errors."""
import os
import sys

sys.path.insert(0, os.path.abspath(".."))

from wsgiproxy import __version__  # noqa: E402

project = "WSGIProxy"
author = "The WSGIProxy developers"
copyright = "2026, " + author
version = release = __version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.intersphinx"]
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True}
exclude_patterns = ["_build", "examples"]
html_theme = "alabaster"
html_static_path = ["_static"] if os.path.isdir(os.path.join(os.path.dirname(__file__), "_static")) else []
intersphinx_mapping = {}
nitpicky = False
