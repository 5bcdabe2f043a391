"""Rewriting the ``Path`` and ``Domain`` attributes of ``Set-Cookie`` values (pure).

The rules follow nginx's ``proxy_cookie_path`` and ``proxy_cookie_domain``:

* a ``Path`` value that starts with FROM has that prefix replaced by TO
  (case-sensitive, no segment boundary: ``/app`` also matches ``/apple``);
* a ``Domain`` value equal to FROM, case-insensitively and ignoring one
  leading dot on either side, is replaced by TO; a leading dot of the
  value is kept;
* with several rules for one attribute, the first that matches is used.

A value is split at every ``;`` as a browser splits it (RFC 6265, section
5.2), so what is rewritten is what the browser will read.  Only the bytes of
a matched attribute value change: the cookie's name and value, the other
attributes, spaces and case stay as they were.  Every ``Path`` (and every
``Domain``) attribute of a value is rewritten, since browsers use the last
one and other readers the first.  A value that is not a well-formed cookie
is passed on untouched.

Imports nothing else of the package: a ground-floor module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

__all__ = ["CookieRewriter", "Rule", "RuleInput", "rewrite_set_cookie", "rules"]

#: One rule: ``(FROM, TO)``.
Rule = tuple[str, str]
#: What the options take: a mapping FROM -> TO, or ``(FROM, TO)`` pairs, in order.
RuleInput = Mapping[str, str] | Iterable[Rule]

# What FROM and TO may hold: visible ASCII without ";" (which would start a
# new attribute).  No space, CR, LF or other control character can get into
# a header value through a rule.
_RULE_TEXT = re.compile(r"[!-:<-~]+\Z").match
# A value is left alone when it holds a control character other than tab.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]").search
_WSP = " \t"


def rules(value: RuleInput | None, what: str = "rule") -> tuple[Rule, ...]:
    """Check and order ``(FROM, TO)`` rules given as a mapping or as pairs.

    :param what: the option's name, for error messages.
    :raises TypeError: for a string (``.ini`` text is converted by
        :func:`wsgiproxy.converters.parse_pairs`) or an item that is not a pair.
    :raises ValueError: for an empty FROM or TO, or one with spaces, control
        characters, ``;`` or non-ASCII text.
    """
    if value is None:
        return ()
    if isinstance(value, (str, bytes)):
        raise TypeError("%s must be a mapping or (FROM, TO) pairs, not a string" % what)
    items = value.items() if isinstance(value, Mapping) else value
    out = []
    for n, item in enumerate(items, 1):
        if isinstance(item, (str, bytes)) or len(item) != 2:
            raise TypeError("%s item %d is not a (FROM, TO) pair: %r" % (what, n, item))
        old, new = item
        for text in (old, new):
            if not isinstance(text, str) or not _RULE_TEXT(text):
                raise ValueError("%s item %d: %r must be visible ASCII text without "
                                 "spaces or ';'" % (what, n, text))
        out.append((old, new))
    return tuple(out)


def _domain_rules(pairs: tuple[Rule, ...]) -> tuple[Rule, ...]:
    """Domain rules with one leading dot dropped from each side and FROM lowercased."""
    out = []
    for n, (old, new) in enumerate(pairs, 1):
        old, new = old[1:] if old[0] == "." else old, new[1:] if new[0] == "." else new
        if not old or not new:
            raise ValueError("cookie_domain item %d: a domain cannot be only a dot" % n)
        out.append((old.lower(), new))
    return tuple(out)


def _new_path(value: str, paths: tuple[Rule, ...]) -> str | None:
    for old, new in paths:
        if value.startswith(old):
            return new + value[len(old):]
    return None


def _new_domain(value: str, domains: tuple[Rule, ...]) -> str | None:
    dot = "." if value[:1] == "." else ""
    name = value[len(dot):].lower()
    for old, new in domains:
        if name == old:
            return dot + new
    return None


def rewrite_set_cookie(value: str, paths: tuple[Rule, ...] = (),
                       domains: tuple[Rule, ...] = ()) -> str:
    """``value`` (one ``Set-Cookie`` header value) with its Path and Domain rewritten.

    :param paths: checked rules (:func:`rules`) for ``Path``.
    :param domains: rules for ``Domain``, as :class:`CookieRewriter` prepares
        them (leading dots dropped, FROM lowercased).
    """
    start = value.find(";")
    if start < 0:
        return value  # no attributes
    pair = value[:start].strip(_WSP)
    if "=" not in pair or _CONTROL(value):
        return value  # not a cookie a browser would take: not ours to change
    cookie_value = pair.partition("=")[2].lstrip(_WSP)
    if cookie_value[:1] == '"' and (len(cookie_value) < 2 or cookie_value[-1] != '"'):
        return value  # an open quote: a ";" inside it splits differently for some readers
    pieces = []
    done = 0
    end = len(value)
    while start < end:
        stop = value.find(";", start + 1)
        if stop < 0:
            stop = end
        name, eq, _ = value[start + 1:stop].partition("=")
        if eq:
            kind = name.strip(_WSP).lower()
            if kind == "path" or kind == "domain":
                first = start + 1 + len(name) + 1
                last = stop
                while first < last and value[first] in _WSP:
                    first += 1
                while last > first and value[last - 1] in _WSP:
                    last -= 1
                if first < last:
                    old = value[first:last]
                    new = (_new_path(old, paths) if kind == "path"
                           else _new_domain(old, domains))
                    if new is not None:
                        pieces += [value[done:first], new]
                        done = last
        start = stop
    if not pieces:
        return value
    pieces.append(value[done:])
    return "".join(pieces)


class CookieRewriter:
    """Rewrites the ``Set-Cookie`` headers of responses by ``cookie_path``/``cookie_domain`` rules.

    :param paths: ``Path`` rules, FROM prefix -> TO (a mapping or pairs).
    :param domains: ``Domain`` rules, FROM -> TO.
    """

    def __init__(self, paths: RuleInput | None = None, domains: RuleInput | None = None) -> None:
        self.paths = rules(paths, "cookie_path")
        self.domains = _domain_rules(rules(domains, "cookie_domain"))

    def __bool__(self) -> bool:
        return bool(self.paths or self.domains)

    def __repr__(self) -> str:
        return "<CookieRewriter paths=%r domains=%r>" % (self.paths, self.domains)

    def rewrite(self, value: str) -> str:
        """One ``Set-Cookie`` value, rewritten."""
        return rewrite_set_cookie(value, self.paths, self.domains)

    def rewrite_headers(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """``headers`` with each ``Set-Cookie`` rewritten, in place and order.

        The same list comes back when nothing changed, a new one otherwise.
        """
        out = None
        for i, (name, value) in enumerate(headers):
            if name[:1] in "Ss" and name.lower() == "set-cookie":
                new = rewrite_set_cookie(value, self.paths, self.domains)
                if new != value:
                    if out is None:
                        out = list(headers)
                    out[i] = (name, new)
        return headers if out is None else out
