"""The wsgiproxy command: serve or check a PasteDeploy .ini file.

  wsgiproxy serve CONFIG.ini [NAME=VALUE ...]   serve it
  wsgiproxy check CONFIG.ini [NAME=VALUE ...]   load everything, serve nothing

serve loads [app:main] (or a pipeline or composite named main) and
[server:main], and serves them; every further [server:NAME] whose NAME also
names an app section is served in the same process, so one .ini file can run
a proxy and a sample backend together.  NAME=VALUE arguments fill %(NAME)s in
the file (http_port=8000), as with pserve.

A configuration error is one line naming the file, the section and the
option, and the exit status is 2 (--traceback shows the traceback); an
address that is taken exits with status 1.
"""

from __future__ import annotations

import _thread
import argparse
import configparser
import errno
import inspect
import logging
import logging.config
import os
import re
import shutil
import sys
import threading
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, distribution, distributions
from typing import Any

from paste.deploy import loadapp, loadserver  # type: ignore[import-untyped]
from paste.deploy.loadwsgi import SERVER, loadcontext  # type: ignore[import-untyped]

from . import __version__
from .configfile import did_you_mean, program_of, read_config, shown_path, with_sections
from .errors import ConfigError

__all__ = ["Failed", "check", "describe", "main", "parse_vars", "serve", "servers_in"]

log = logging.getLogger("wsgiproxy.command")

_APP_KINDS = ("app", "pipeline", "composite", "filter-app")
#: Exit statuses: a configuration error (also a usage error), an address that is taken.
CONFIG_ERROR, BIND_ERROR = 2, 1
_BIND_ERRNOS = (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL)
_ENTRY_POINT = re.compile(r"Entry point '([^']*)' not found in egg '([^']*)'")
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class Failed(Exception):
    """A failure the command reports as one line, with an exit status.

    :param line: what went wrong (the command puts ``wsgiproxy:`` before it).
    :param status: the exit status.
    """

    def __init__(self, line: str, status: int = CONFIG_ERROR) -> None:
        super().__init__(line)
        self.line = line
        self.status = status


def servers_in(path: str) -> list[str]:
    """Names of the ``[server:NAME]`` sections that have an app of the same name, main first.

    :param path: the ``.ini`` file.
    """
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read(path)
    sections = parser.sections()
    apps = {s.split(":", 1)[1].strip() for s in sections
            if s.split(":", 1)[0].strip() in _APP_KINDS and ":" in s}
    names = [s.split(":", 1)[1].strip() for s in sections
             if s.startswith("server:") and s.split(":", 1)[1].strip() in apps]
    return sorted(names, key=lambda n: n != "main")


def parse_vars(items: list[str] | None) -> dict[str, str]:
    """``["a=1", "b=2"]`` -> ``{"a": "1", "b": "2"}``.

    :param items: the ``NAME=VALUE`` arguments.
    :raises Failed: for an item that is not ``NAME=VALUE``.
    """
    out = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise Failed("expected NAME=VALUE, got %r" % item)
        out[name.strip()] = value
    return out


def _config_path(config: str) -> str:
    path = os.path.abspath(config)
    if not os.path.isfile(path):
        raise Failed("no such config file: %s" % config)
    return path


def _explain(exc: BaseException, path: str) -> str | None:
    """One line for an error raised while loading ``path``; None when it is not the config's."""
    if isinstance(exc, ConfigError):
        return str(exc)
    if isinstance(exc, configparser.InterpolationMissingOptionError):
        return ("%s [%s] %s: %%(%s)s has no value: give %s=VALUE after the file name, "
                "or set it in [DEFAULT]" % (shown_path(path), exc.section, exc.option,
                                            exc.reference, exc.reference))
    if isinstance(exc, configparser.Error):
        return "%s: %s" % (shown_path(path), "; ".join(
            line.strip().rstrip(".")
            for line in str(exc).replace(path, shown_path(path)).splitlines()))
    if isinstance(exc, PackageNotFoundError):
        return _distribution_line(path, exc.name)
    if isinstance(exc, LookupError):
        match = _ENTRY_POINT.search(str(exc))
        if match:
            return _entry_point_line(path, match.group(1), match.group(2))
        return "%s: %s" % (shown_path(path), str(exc).replace(path, shown_path(path)))
    if isinstance(exc, ImportError):
        return "%s: %s" % (shown_path(path), exc)
    return None


def _entry_point_line(path: str, name: str, dist: str) -> str:
    """``proxy.ini [app:main] use = egg:WSGIProxy#mian: ... (did you mean main?)``."""
    parser = read_config(path)
    sections = [s for s in parser.sections()
                if parser[s].get("use", "").strip().endswith("#" + name)]
    use = parser[sections[0]]["use"].strip() if sections else "egg:%s#%s" % (dist, name)
    names = [ep.name for ep in distribution(dist).entry_points if ep.group.startswith("paste.")]
    close = did_you_mean(name, names)
    return "%s use = %s: %s has no entry point %s%s" % (
        with_sections(path, sections), use, dist, name,
        "; did you mean %s?" % close if close else " (it has %s)" % ", ".join(sorted(set(names))))


def _distribution_line(path: str, name: str) -> str:
    """``proxy.ini [app:main] use = egg:WSGIPrxy#main: ... (did you mean WSGIProxy?)``."""
    parser = read_config(path)
    sections = [s for s in parser.sections()
                if re.match(r"egg:%s\b" % re.escape(name), parser[s].get("use", "").strip())]
    use = " use = %s" % parser[sections[0]]["use"].strip() if sections else ""
    close = did_you_mean(name, (d.metadata["Name"] for d in distributions()
                                if d.metadata["Name"]))
    return "%s%s: no distribution %s is installed%s" % (
        with_sections(path, sections), use, name, "; did you mean %s?" % close if close else "")


def _load(path: str, names: list[str] | None, variables: dict[str, str],
          servers: bool = True) -> list[tuple[str, Any, Any]]:
    """``(name, server, app)`` for each server to run, loaded; nothing is served yet.

    With ``servers`` false, a file without server sections (one for
    ``gunicorn --paste``) gives its main app, with None for the server.
    """
    names = names or servers_in(path)
    if not names and not servers:
        return [("main", None, loadapp("config:" + path, global_conf=variables))]
    if not names:
        raise Failed("%s has no [server:main] with an app to serve" % shown_path(path))
    uri = "config:" + path
    return [(name, loadserver(uri, name=name, global_conf=variables),
             loadapp(uri, name=name, global_conf=variables)) for name in names]


def _address(path: str, name: str, variables: dict[str, str]) -> str:
    """``listen = 127.0.0.1:8080`` (or ``host``/``port``) of ``[server:NAME]``, as given."""
    conf = loadcontext(SERVER, "config:" + path, name=name, global_conf=variables).local_conf
    if conf.get("listen"):
        return "listen = %s" % " ".join(conf["listen"].split())
    return "%s:%s" % (conf.get("host", "0.0.0.0"), conf.get("port", "8080"))


def _bind_failed(exc: OSError, path: str, name: str, variables: dict[str, str]) -> Failed:
    address = _address(path, name, variables)
    return Failed("%s [server:%s] %s: cannot listen there: %s" % (
        shown_path(path), name, address, exc.strerror or exc), BIND_ERROR)


def _setup_logging(path: str, variables: dict[str, str], level: str | None) -> None:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read(path)
    if any(s in parser for s in ("loggers", "handlers", "formatters")):
        defaults = dict(variables, __file__=path, here=os.path.dirname(path))
        logging.config.fileConfig(path, defaults, disable_existing_loggers=False)
    else:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if level:
        logging.getLogger().setLevel(level.upper())


def serve(config: str, names: list[str] | None = None,
          variables: dict[str, str] | None = None, log_level: str | None = None) -> None:
    """Load and run the servers of ``config``; returns when they all stop.

    :param config: the ``.ini`` file.
    :param names: the server/app names to serve (default: every one, main first).
    :param variables: values for ``%(NAME)s`` in the file.
    :param log_level: the root logger's level (``debug``, ``info``...), over the file's.
    :raises Failed: for an address that is taken.
    """
    variables = dict(variables or {})
    path = _config_path(config)
    _setup_logging(path, variables, log_level)
    runners = _load(path, names, variables)
    failed: list[Failed] = []

    def run_other(name: str, server: Any, app: Any) -> None:
        try:
            server(app)
        except OSError as exc:
            if exc.errno not in _BIND_ERRNOS:
                raise
            failed.append(_bind_failed(exc, path, name, variables))
            _thread.interrupt_main()

    for name, server, app in runners[1:]:
        threading.Thread(target=run_other, args=(name, server, app), name="server-" + name,
                         daemon=True).start()
    name, server, app = runners[0]
    try:
        server(app)
    except OSError as exc:
        if exc.errno not in _BIND_ERRNOS:
            raise
        raise _bind_failed(exc, path, name, variables) from exc
    except KeyboardInterrupt:
        if not failed:
            log.info("interrupted; stopping")
    if failed:  # another server's address was taken (waitress may swallow the interrupt)
        raise failed[0]


def describe(app: Any, indent: str = "  ") -> Iterator[str]:
    """Lines saying what ``app`` is and what it wraps, the innermost last.

    :param app: a loaded WSGI application.
    :param indent: put before each line, one step more for each wrapped app.
    """
    seen: set[int] = set()
    while app is not None and id(app) not in seen:
        seen.add(id(app))
        yield indent + _one(app)
        mapped = getattr(app, "applications", None)
        if isinstance(mapped, list):  # paste.urlmap
            for (domain, url), inner in mapped:
                yield "%s  %s%s:" % (indent, domain or "", url or "/")
                yield from describe(inner, indent + "    ")
            return
        app = _inner(app)
        indent += "  "


def _inner(app: Any) -> Any:
    """The app ``app`` wraps: its ``app`` or ``application``, also of a filter function."""
    for name in ("app", "application"):
        inner = getattr(app, name, None)
        if inner is not None:
            return inner
    if inspect.isfunction(app) and app.__closure__:
        nonlocals = inspect.getclosurevars(app).nonlocals
        return nonlocals.get("app") or nonlocals.get("application")
    return None


def _one(app: Any) -> str:
    kind = type(app).__name__
    if kind == "WSGIProxyApp":
        signed = ("signed (%s)" % app.signature_format
                  if app.secret_keys is not None or getattr(app, "signer", None) else "not signed")
        return "WSGIProxyApp: forwards to %s, %s" % (" ".join(app.hrefs), signed)
    if kind == "SpawningApplication":
        return "SpawningApplication: %d worker%s running %s" % (
            app.workers, "" if app.workers == 1 else "s", " ".join(app.argv))
    if kind == "WSGIProxyMiddleware":
        return "WSGIProxyMiddleware"
    name = getattr(app, "__qualname__", None) or kind
    module = getattr(app, "__module__", None) or type(app).__module__
    return "%s.%s" % (module, name)


def _spawned_programs(app: Any, path: str) -> None:
    """Every spawn's program exists (on ``PATH``, next to Python, or as a path)."""
    seen: set[int] = set()
    todo = [app]
    while todo:
        app = todo.pop()
        if app is None or id(app) in seen:
            continue
        seen.add(id(app))
        todo.append(_inner(app))
        mapped = getattr(app, "applications", None)
        if isinstance(mapped, list):  # paste.urlmap
            todo += [inner for _, inner in mapped]
        command = getattr(app, "command", None)
        if type(app).__name__ != "SpawningApplication" or command is None:
            continue
        argv, env = command.resolve(0)
        program = argv[0]
        if os.sep in program:
            full = os.path.join(app.cwd or os.getcwd(), program)
            found = os.path.isfile(full) and os.access(full, os.X_OK)
        else:
            found = bool(shutil.which(program, path=env.get("PATH", os.defpath)))
        if not found:
            parser = read_config(path)
            sections = [s for s in parser.sections()
                        if program_of(parser[s].get("start_script", "")) == app.argv[0]]
            raise ConfigError("start_script", "cannot run %s: %s" % (
                program, "no such executable file" if os.sep in program
                else "not found on PATH"), None, with_sections(path, sections))


def check(config: str, names: list[str] | None = None,
          variables: dict[str, str] | None = None) -> list[str]:
    """Load everything ``config`` serves, without serving; lines saying what it would serve.

    Building the apps reads their secret and key files and parses every
    ``href``; a spawn's program must be found.

    :param config: the ``.ini`` file.
    :param names: the server/app names (default: every one, main first).
    :param variables: values for ``%(NAME)s`` in the file.
    :raises ConfigError: (and PasteDeploy's errors) for what would stop ``serve``.
    """
    variables = dict(variables or {})
    path = _config_path(config)
    lines = []
    for name, server, app in _load(path, names, variables, servers=False):
        _spawned_programs(app, path)
        if server is None:
            lines.append("app %s (no [server:%s]: for gunicorn --paste)" % (name, name))
        else:
            lines.append("[server:%s] %s" % (name, _address(path, name, variables)))
        lines.extend(describe(app))
    lines.append("%s: configuration OK" % shown_path(path))
    return lines


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("config", help="a PasteDeploy .ini file")
    common.add_argument("variables", nargs="*", metavar="NAME=VALUE",
                        help="values for %%(NAME)s in the file")
    common.add_argument("--name", action="append", dest="names",
                        help="only this server/app name (repeatable; default: all)")
    common.add_argument("--traceback", action="store_true",
                        help="show the traceback of an error, not one line")
    parser = argparse.ArgumentParser(
        prog="wsgiproxy", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1])
    parser.add_argument("--version", action="version", version="WSGIProxy %s" % __version__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p_serve = sub.add_parser("serve", parents=[common],
                             help="serve the app and server sections of a .ini file",
                             description="Serve the app and server sections of a .ini file.")
    p_serve.add_argument("--log-level", choices=_LOG_LEVELS, type=str.lower,
                         help="the root logger's level (default: the file's, else info)")
    p_serve.add_argument("--reload", action="store_true",
                         help="restart when a Python file or the .ini file changes "
                              "(for development; needs hupper)")
    sub.add_parser("check", parents=[common],
                   help="load everything, serve nothing; exit 0 or 2 (like nginx -t)",
                   description="Load the apps, filters, key files and servers of a .ini "
                               "file without serving, and say what would be served.")
    return parser


def _reloading(argv: list[str], path: str) -> None:
    """Under ``--reload``: start hupper's monitor (which never returns) or watch ``path``."""
    try:
        import hupper  # type: ignore[import-untyped]
    except ImportError:
        raise Failed("--reload needs hupper: pip install 'WSGIProxy[reload]'") from None
    if not hupper.is_active():
        hupper.start_reloader("wsgiproxy.command.main", worker_kwargs={"argv": argv})
    hupper.get_reloader().watch_files([path])


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (0, 1 or 2).

    :param argv: the arguments (default: ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    path = os.path.abspath(args.config)
    try:
        variables = parse_vars(args.variables)
        if args.command == "serve":
            if args.reload:
                _reloading(argv, path)
            serve(args.config, args.names, variables, args.log_level)
        else:
            print("\n".join(check(args.config, args.names, variables)))
    except Failed as exc:
        if args.traceback:
            raise
        print("wsgiproxy: %s" % exc.line, file=sys.stderr)
        return exc.status
    except Exception as exc:
        line = _explain(exc, path)
        if line is None or args.traceback:
            raise
        print("wsgiproxy: %s" % line, file=sys.stderr)
        return CONFIG_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
