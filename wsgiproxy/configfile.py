"""Where a configuration error is: the ``.ini`` file, the section and the option.

The deployment layer's helpers for errors: :func:`locate` turns what a
factory raised into one :class:`~wsgiproxy.errors.ConfigError` line naming
the file, the section (``[app:main]``) and the option; :func:`did_you_mean`
suggests the close spelling of a misspelt name.  Used by the factories of
:mod:`wsgiproxy.wsgiapp` (so the line is the same under ``gunicorn --paste``)
and by the ``wsgiproxy`` command.

How a component names the option of its error, in order:

1. it raises :class:`~wsgiproxy.errors.ConfigError` with the option's name;
2. or a :class:`ValueError` (:class:`TypeError`) whose message starts with
   the option's name (``"scheme must be http or https ..."``);
3. or one whose message quotes the value (``repr``) of exactly one option
   (``"cannot read secret file '/etc/x'"``), or holds it if it is a path.

Otherwise the line names the file and section only.
"""

from __future__ import annotations

import configparser
import difflib
import os
import re
import shlex
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from .errors import ConfigError

__all__ = ["did_you_mean", "find_sections", "locate", "program_of", "read_config", "shown_path",
           "with_sections"]

# Section options that PasteDeploy reads itself: never a component's option.
_LOADER_OPTIONS = frozenset(["use", "filter-with", "next", "require", "pipeline", "paste.app_factory",
                             "paste.filter_app_factory", "paste.filter_factory"])
_COMPONENT_KINDS = ("app", "application", "filter", "filter-app")
_FIRST_WORD = re.compile(r"[a-z][a-z0-9_]*").match


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The one of ``choices`` closest to a misspelt ``word``, or None when none is close.

    :param word: what was written.
    :param choices: the names that exist.
    """
    close = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.75)
    return close[0] if close else None


def read_config(path: str) -> configparser.ConfigParser:
    """The ``.ini`` file as written: no interpolation, ``[DEFAULT]`` kept as a section of its own.

    :param path: the file.
    """
    parser = configparser.ConfigParser(interpolation=None, strict=False,
                                       default_section="\0 none")
    parser.read(path)
    return parser


def shown_path(path: str) -> str:
    """``path`` as the user probably wrote it: relative when under the current directory.

    :param path: an absolute path.
    """
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _section_options(parser: configparser.ConfigParser, section: str) -> dict[str, str]:
    """The options PasteDeploy hands a section's factory, with their raw values."""
    defaults = set(parser["DEFAULT"]) if parser.has_section("DEFAULT") else set()
    out = {}
    for option, value in parser[section].items():
        if option.startswith("get "):
            option = option[4:].strip()
        elif option.startswith("set ") or option in _LOADER_OPTIONS or option in defaults:
            continue
        out[option] = value
    return out


def find_sections(path: str, settings: Mapping[str, Any], entry: str | None = None) -> list[str]:
    """The sections of ``path`` a factory given ``settings`` may have been built from.

    A factory is not told its section: it is the one whose options are the
    names of ``settings``; among several, those whose ``use`` names
    ``entry`` and whose plain values are those of ``settings``.

    :param path: the ``.ini`` file.
    :param settings: the options the factory was given (before defaults).
    :param entry: the entry point's name (``main``, ``spawn``...), if known.
    """
    parser = read_config(path)
    found = [s for s in parser.sections()
             if s.split(":", 1)[0].strip() in _COMPONENT_KINDS
             and set(_section_options(parser, s)) == set(settings)]
    if len(found) > 1 and entry:
        by_entry = [s for s in found if _uses(parser[s].get("use", ""), entry)]
        found = by_entry or found
    if len(found) > 1:
        same = [s for s in found if all(
            "%(" in raw or raw.strip() == str(settings[name]).strip()
            for name, raw in _section_options(parser, s).items())]
        found = same or found
    return found


def _uses(use: str, entry: str) -> bool:
    use = use.strip()
    return use.endswith("#" + entry) or (entry == "main" and "#" not in use)


def with_sections(path: str, sections: Collection[str]) -> str:
    """``"proxy.ini [app:main]"``: the file as shown, and the section(s) when known.

    :param path: the ``.ini`` file.
    :param sections: the section names (several are joined with ``or``).
    """
    where = shown_path(path)
    if sections:
        where += " " + " or ".join("[%s]" % s for s in sections)
    return where


def _option_of(exc: Exception, settings: Mapping[str, Any]) -> str:
    if isinstance(exc, ConfigError):
        return exc.option
    message = str(exc)
    first = _FIRST_WORD(message)
    if first and first.group() in settings:
        return first.group()
    quoted = [name for name, value in settings.items()
              if isinstance(value, str) and value.strip()
              and (repr(value.strip()) in message or ("/" in value and value.strip() in message))]
    return quoted[0] if len(quoted) == 1 else ""


def locate(exc: Exception, settings: Mapping[str, Any], global_conf: Mapping[str, Any],
           entry: str, secret: Collection[str] = ()) -> ConfigError:
    """What a factory raised, as one :class:`~wsgiproxy.errors.ConfigError` line.

    ``proxy.ini [app:main] read_timeout = -5: must be a positive number of
    seconds, not -5.0``: the file (``__file__`` of ``global_conf``), the
    section, the option and its value as written (not for ``secret``
    options), then what is wrong.  Without a file, the entry point stands for
    the file and section.  A :class:`~wsgiproxy.errors.UnknownOption` stays one.

    :param exc: the :class:`ValueError` or :class:`TypeError` raised.
    :param settings: the options as the factory got them.
    :param global_conf: PasteDeploy's global configuration.
    :param entry: the entry point, ``egg:WSGIProxy#main``.
    :param secret: options whose value is never shown.
    """
    if isinstance(exc, ConfigError) and exc.where not in (None, entry):
        return exc  # located already (a factory inside another)
    option = _option_of(exc, settings)
    path = global_conf.get("__file__")
    if path:
        where = with_sections(path, find_sections(path, settings,
                                                         entry.rpartition("#")[2].split()[0]))
    else:
        where = entry
    value = settings.get(option) if option else None
    if not isinstance(value, str) or option in secret:
        value = None
    elif "\n" in value.strip():
        value = repr(value.strip())  # still one line
    problem = exc.problem if isinstance(exc, ConfigError) else str(exc)
    cls = type(exc) if isinstance(exc, ConfigError) else ConfigError
    return cls(option, problem, None if value is None else value.strip(), where)


def program_of(start_script: str) -> str:
    """The program of a ``start_script`` as written: its first word.

    :param start_script: the option's value.
    """
    words = shlex.split(start_script)
    return words[0] if words else ""
