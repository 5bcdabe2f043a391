"""Sphinx configuration; the test command builds these docs with warnings as errors."""
import os
import sys
from typing import ClassVar

sys.path.insert(0, os.path.abspath(".."))

from wsgiproxy import __version__

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
intersphinx_mapping: dict = {}
nitpicky = False

# Pygments has no lexer for HAProxy's configuration, which the deployment
# pages show: a small one, so that ".. code-block:: haproxy" highlights
# instead of warning (and warnings fail the build).
from pygments.lexer import RegexLexer, bygroups  # type: ignore[import-untyped]
from pygments.token import (  # type: ignore[import-untyped]
    Comment,
    Keyword,
    Name,
    Number,
    String,
    Text,
    Whitespace,
)


class HAProxyLexer(RegexLexer):
    """HAProxy configuration: sections, then one keyword and its arguments per line."""

    name = "HAProxy"
    aliases: ClassVar[list[str]] = ["haproxy"]
    filenames: ClassVar[list[str]] = ["haproxy.cfg"]
    tokens: ClassVar[dict] = {
        "root": [
            (r"\s*#.*?$", Comment.Single),
            ((r"^(global|defaults|frontend|backend|listen|resolvers|peers|userlist|program"
              r"|http-errors|mailers|ring|cache)\b"), Keyword.Namespace, "arguments"),
            (r"^(\s+)([\w.-]+)", bygroups(Whitespace, Keyword), "arguments"),
            (r"\s+", Whitespace),
            (r".+", Text),
        ],
        "arguments": [
            (r"\n", Whitespace, "#pop"),
            (r"#.*?$", Comment.Single),
            (r'"(\\\\|\\"|[^"])*"', String.Double),
            (r"'[^']*'", String.Single),
            (r"\b\d+(\.\d+)?(ms|s|m|h|d|k|K|M|G)?\b", Number),
            (r"[\w.:/*%{}\[\]-]+", Name),
            (r"[ \t]+", Whitespace),
            (r".", Text),
        ],
    }


def setup(app):
    app.add_lexer("haproxy", HAProxyLexer)
