"""RFC 9111 freshness for a shared cache, decided here rather than by httplib2.

Pure functions over header values and times (the clock is an argument):
strict HTTP dates, ``Cache-Control`` directives, ``Age``, the freshness
lifetime (``s-maxage``, ``max-age``, ``Expires``), the current age, what the
request's own directives allow, and ``Vary`` as a list with optional
whitespace.  Anything that cannot be read makes a response stale; nothing
here raises on a bad value.
"""

from __future__ import annotations

import calendar
import datetime
import re
import time
from collections.abc import Mapping
from typing import Any

from ..abnf import split_comma_list

_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_LONG_DAY = r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH = "(%s)" % "|".join(_MONTHS)
_TIME = r"(\d\d):(\d\d):(\d\d)"
# RFC 9110 section 5.6.7: IMF-fixdate, and the two obsolete forms a recipient
# must still accept.  Names and "GMT" are case-sensitive; nothing else passes.
_IMF_FIXDATE = re.compile(r"%s, (\d\d) %s (\d{4}) %s GMT\Z" % (_DAY, _MONTH, _TIME))
_RFC850 = re.compile(r"%s, (\d\d)-%s-(\d\d) %s GMT\Z" % (_LONG_DAY, _MONTH, _TIME))
_ASCTIME = re.compile(r"%s %s ([ \d]\d) %s (\d{4})\Z" % (_DAY, _MONTH, _TIME))

_DELTA = re.compile(r"\d+\Z")
_FOREVER = 2 ** 31  # RFC 9111 section 1.2.2: the largest delta-seconds worth keeping

#: Response directives after which a stale response is never served without
#: revalidation, whatever the request's ``max-stale`` says (shared cache).
_NO_STALE = ("must-revalidate", "proxy-revalidate", "s-maxage", "no-cache")


def parse_http_date(value: str | None, now: float | None = None) -> float | None:
    """The POSIX time of an HTTP date, or ``None`` when ``value`` is not one.

    :param value: the field value (one date; a list of dates is invalid).
    :param now: the current time, for the century of a two-digit year.
    """
    if value is None:
        return None
    value = value.strip(" \t")
    match = _IMF_FIXDATE.match(value)
    if match:
        day, month, year, hour, minute, second = match.groups()
    else:
        match = _ASCTIME.match(value)
        if match:
            month, day, hour, minute, second, year = match.groups()
        else:
            match = _RFC850.match(value)
            if not match:
                return None
            day, month, yy, hour, minute, second = match.groups()
            # More than 50 years ahead means the same two digits in the past.
            this_year = time.gmtime(time.time() if now is None else now).tm_year
            year = str(this_year - this_year % 100 + int(yy))
            if int(year) > this_year + 50:
                year = str(int(year) - 100)
    try:
        fields = (int(year), _MONTHS.index(month) + 1, int(day), int(hour), int(minute),
                  int(second))
        datetime.datetime(*fields)  # rejects 31 Feb, hour 24, second 60...
    except ValueError:
        return None
    return float(calendar.timegm(fields))


def cache_directives(value: str | None) -> dict[str, list[str | None]]:
    """``Cache-Control`` (or ``CDN-Cache-Control``) as lower-case names to their arguments.

    Every occurrence is kept, in order (``None`` for a directive without
    ``=``); quoted arguments are unquoted.
    """
    directives: dict[str, list[str | None]] = {}
    for part in split_comma_list(value or ""):
        name, eq, arg = part.partition("=")
        name = name.strip(" \t").lower()
        if not name:
            continue
        argument: str | None = None
        if eq:
            argument = arg.strip(" \t")
            if len(argument) >= 2 and argument[0] == argument[-1] == '"':
                argument = re.sub(r"\\(.)", r"\1", argument[1:-1])
        directives.setdefault(name, []).append(argument)
    return directives


def delta_seconds(directives: Mapping[str, list[str | None]], name: str) -> int | None:
    """The one valid delta-seconds argument of ``name``, or ``None``.

    Missing, repeated with different values, empty or not digits: ``None``.
    """
    args = directives.get(name)
    if not args or any(arg != args[0] for arg in args):
        return None
    arg = args[0]
    if arg is None or not _DELTA.match(arg):
        return None
    return min(int(arg), _FOREVER)


def age_value(value: str | None) -> int | None:
    """The ``Age`` header's seconds: 0 when absent, ``None`` when invalid (one number only)."""
    if value is None:
        return 0
    value = value.strip(" \t")
    if not _DELTA.match(value):
        return None
    return min(int(value), _FOREVER)


def freshness_lifetime(headers: Mapping[str, str], directives: Mapping[str, list[str | None]],
                       date: float) -> int:
    """Seconds a response stays fresh in a shared cache; 0 when nothing valid says more.

    ``s-maxage``, else ``max-age``, else ``Expires`` minus ``date``; an
    invalid value of the first one present counts as 0.  No heuristic
    freshness.
    """
    for name in ("s-maxage", "max-age"):
        if name in directives:
            return delta_seconds(directives, name) or 0
    expires = headers.get("expires")
    if expires is None:
        return 0
    stamp = parse_http_date(expires, date)
    if stamp is None:
        return 0
    return max(0, int(stamp - date))


def current_age(headers: Mapping[str, str], request_time: float, response_time: float,
                now: float) -> int | None:
    """RFC 9111 section 4.2.3: the response's age now, or ``None`` when ``Date`` or ``Age`` is invalid.

    A response without ``Date`` is dated when it was received.
    """
    age = age_value(headers.get("age"))
    if age is None:
        return None
    date = response_time
    if headers.get("date") is not None:
        parsed = parse_http_date(headers.get("date"), response_time)
        if parsed is None:
            return None
        date = parsed
    apparent_age = max(0.0, response_time - date)
    corrected_age_value = age + max(0.0, response_time - request_time)
    initial = max(apparent_age, corrected_age_value)
    return int(initial + max(0.0, now - response_time))


def usable(headers: Any, request: Mapping[str, list[str | None]],
           request_time: float, response_time: float, now: float) -> int | None:
    """The age to serve a stored response with, or ``None`` when it may not be served now.

    :param headers: the stored response's headers (lower-case names).
    :param request: the request's ``Cache-Control`` directives: ``max-age``
        and ``min-fresh`` may only shorten the response's freshness;
        ``max-stale`` allows a stale response unless the response forbids it.
        A request ``no-cache`` is handled by the caller.
    """
    directives = cache_directives(headers.get("cache-control"))
    restrictions = cache_directives(headers.get("cdn-cache-control"))
    if "no-cache" in directives or "no-cache" in restrictions:
        return None
    age = current_age(headers, request_time, response_time, now)
    if age is None:
        return None
    date = parse_http_date(headers.get("date"), response_time) or response_time
    lifetime = freshness_lifetime(headers, directives, date)
    if "max-age" in request:
        limit = delta_seconds(request, "max-age")
        if limit is None or age > limit:
            return None
    if "min-fresh" in request:
        extra = delta_seconds(request, "min-fresh")
        if extra is not None and lifetime - age < extra:
            return None
    if lifetime > age:
        return age
    if "max-stale" in request and not any(name in directives for name in _NO_STALE):
        args = request["max-stale"]
        if args == [None] * len(args):
            return age
        allowed = delta_seconds(request, "max-stale")
        if allowed is not None and age - lifetime <= allowed:
            return age
    return None


def vary_names(value: str | None) -> list[str] | None:
    """The lower-case field names of ``Vary`` (a list with optional whitespace, tabs
    included); ``None`` for ``*`` (never matches)."""
    names = [name.lower() for name in split_comma_list(value or "")]
    if "*" in names:
        return None
    return names


def normalized_field(value: str | None) -> str | None:
    """A request field value as ``Vary`` compares it: list elements without their whitespace."""
    if value is None:
        return None
    return ",".join(split_comma_list(value))
