"""Configuration strings to typed values: lists, byte sizes, credentials, pairs.

Used by the deployment layer (:mod:`wsgiproxy.wsgiapp`) to turn ``.ini``
strings into the typed arguments the components take.  No imports from the
rest of the package, so every layer may use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

__all__ = ["aslist", "credential_tuples", "parse_credentials", "parse_pairs", "parse_size"]

_SIZE = re.compile(r"\s*([0-9]+)\s*(?:([kmg])(?:i?b)?|b)?\s*\Z", re.IGNORECASE).match

#: One credentials entry: ``(user, password, domain)``, domain lowercased, ``""`` for any.
Credential = tuple[str, str, str]


def aslist(value: str | Iterable[str] | None) -> list[str]:
    """A list from a string of items separated by commas and/or whitespace."""
    if value is None:
        return []
    if isinstance(value, str):
        return [item for item in re.split(r"[\s,]+", value) if item]
    return list(value)


def parse_size(value: int | str) -> int:
    """A byte count: an int, or a string such as ``"1048576"``, ``"512K"``, ``"10M"``, ``"1GB"``.

    The units are binary (K = 1024).
    """
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE(str(value))
        if match is None:
            raise ValueError("invalid size %r (use bytes, or a number with K, M or G)" % value)
        size = int(match.group(1)) * 1024 ** " kmg".index((match.group(2) or " ").lower())
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


def parse_pairs(value: str) -> list[tuple[str, str]]:
    """``[(FROM, TO), ...]`` from ``.ini`` text of one ``FROM TO`` pair per line, in order.

    Blank lines are skipped; any other line must hold exactly two words.
    """
    out = []
    for n, line in enumerate(value.splitlines(), 1):
        words = line.split()
        if not words:
            continue
        if len(words) != 2:
            raise ValueError("line %d: expected 'FROM TO', got %r" % (n, line.strip()))
        out.append((words[0], words[1]))
    return out


def parse_credentials(value: str | Iterable[Any] | None) -> list[Credential]:
    """``[(user, password, domain), ...]`` from a list, or from an ``.ini`` string.

    A list holds ``(user, password)`` or ``(user, password, domain)`` tuples.
    A string holds whitespace-separated items ``user:password`` (for every
    backend) or ``user:password@domain``, the domain being a backend's
    ``host``, or ``host:port`` for a non-default port.  The item splits at
    its last ``@`` (when what precedes it holds a ``:``) and then at the
    first ``:``; each part is percent-decoded, so write a space as ``%20``,
    ``%`` as ``%25``, an ``@`` in a password as ``%40`` and a ``:`` in a user
    name as ``%3A``.
    """
    if not value:
        return []
    items = value.split() if isinstance(value, str) else list(value)
    out = []
    for n, item in enumerate(items, 1):
        if isinstance(item, str):
            domain = ""
            userinfo, at, host = item.rpartition("@")
            if at and ":" in userinfo:
                item, domain = userinfo, host
            user, sep, password = item.partition(":")
            if not sep or not user:
                # Never echo the item: it holds a password.
                raise ValueError("credentials item %d is not user:password or "
                                 "user:password@domain" % n)
            out.append((unquote(user), unquote(password), unquote(domain).lower()))
        else:
            out.append(_credential(item, n))
    return out


def credential_tuples(value: Iterable[Any] | None) -> list[Credential]:
    """``[(user, password, domain), ...]`` from ``(user, password[, domain])`` tuples (typed only).

    :raises TypeError: for a string (convert ``.ini`` strings with
        :func:`parse_credentials`).
    """
    if isinstance(value, str):
        raise TypeError("credentials must be (user, password[, domain]) tuples; "
                        "parse an .ini string with parse_credentials()")
    out = []
    for n, item in enumerate(value or (), 1):
        if isinstance(item, str):
            raise TypeError("credentials item %d is a string, not a (user, password[, domain]) "
                            "tuple" % n)
        out.append(_credential(item, n))
    return out


def _credential(item: Iterable[Any], n: int) -> Credential:
    fields = tuple(item)
    if len(fields) not in (2, 3):
        raise ValueError("credentials item %d is not (user, password[, domain])" % n)
    user, password, domain = (fields + ("",))[:3]
    return (user, password, (domain or "").lower())
