"""Pieces of the HTTP grammar (RFC 9110 section 5.6), built in one place.

Every module that checks a token or splits a comma-separated header value
uses these, so the rules cannot drift apart.  Pure functions on strings.
"""

from __future__ import annotations

import re

__all__ = ["TOKEN", "is_token", "split_comma_list"]

#: ``token = 1*tchar`` as a regular expression (no anchors).
TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"

#: True when the whole string is a token.
is_token = re.compile(TOKEN + r"\Z").match

# One list element: quoted strings (with backslash escapes) and anything but
# a comma or a quote, in any order.
_ELEMENT = re.compile(r'(?:"(?:[^"\\]|\\.)*"?|[^,"])*', re.DOTALL)


def split_comma_list(value: str) -> list[str]:
    """The elements of a ``#rule`` list, stripped of whitespace, empty ones left out.

    A comma inside a quoted string does not split (``a, "b, c"`` has two
    elements); an unterminated quote runs to the end of the value.
    """
    if '"' not in value:  # the common case: no quotes at all
        return [e for e in (p.strip(" \t") for p in value.split(",")) if e]
    elements = []
    pos, end = 0, len(value)
    while pos <= end:
        match = _ELEMENT.match(value, pos)
        assert match is not None  # the pattern matches the empty string
        element = match.group().strip(" \t")
        if element:
            elements.append(element)
        pos = match.end() + 1  # past the comma
    return elements
