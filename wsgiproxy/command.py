"""The ``wsgiproxy`` command: ``wsgiproxy serve CONFIG.ini [NAME=VALUE ...]``.

It loads ``[app:main]`` (or a pipeline/composite named main) and
``[server:main]`` with PasteDeploy and serves them.  Every further
``[server:NAME]`` whose ``NAME`` also names an app section is served in the
same process, so one ``.ini`` can run a proxy and a sample backend together.
``NAME=VALUE`` arguments fill ``%(NAME)s`` in the file (``http_port=8000``),
as with ``pserve``; spawn uses that to hand a child its port.
"""

from __future__ import annotations

import argparse
import configparser
import logging
import logging.config
import os
import sys
import threading

from paste.deploy import loadapp, loadserver  # type: ignore[import-untyped]

log = logging.getLogger("wsgiproxy.command")

_APP_KINDS = ("app", "pipeline", "composite", "filter-app")


def servers_in(path: str) -> list[str]:
    """Names of the ``[server:NAME]`` sections that have an app of the same name, main first."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read(path)
    sections = parser.sections()
    apps = {s.split(":", 1)[1].strip() for s in sections
            if s.split(":", 1)[0].strip() in _APP_KINDS and ":" in s}
    names = [s.split(":", 1)[1].strip() for s in sections
             if s.startswith("server:") and s.split(":", 1)[1].strip() in apps]
    return sorted(names, key=lambda n: n != "main")


def parse_vars(items: list[str] | None) -> dict[str, str]:
    """``["a=1", "b=2"]`` -> ``{"a": "1", "b": "2"}``; anything else is a usage error."""
    out = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit("wsgiproxy: expected NAME=VALUE, got %r" % item)
        out[name.strip()] = value
    return out


def serve(config: str, names: list[str] | None = None,
          variables: dict[str, str] | None = None) -> None:
    """Load and run the servers of ``config``; returns when they all stop."""
    path = os.path.abspath(config)
    if not os.path.exists(path):
        raise SystemExit("wsgiproxy: no such config file: %s" % config)
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read(path)
    if any(s in parser for s in ("loggers", "handlers", "formatters")):
        defaults = dict(variables or {}, __file__=path, here=os.path.dirname(path))
        logging.config.fileConfig(path, defaults, disable_existing_loggers=False)
    else:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    names = names or servers_in(path)
    if not names:
        raise SystemExit("wsgiproxy: %s has no [server:main] with an app to serve" % config)
    uri = "config:" + path
    runners = []
    for name in names:
        app = loadapp(uri, name=name, global_conf=variables)
        server = loadserver(uri, name=name, global_conf=variables)
        runners.append((name, server, app))
    threads = []
    for name, server, app in runners[1:]:
        t = threading.Thread(target=server, args=(app,), name="server-" + name, daemon=True)
        t.start()
        threads.append(t)
    name, server, app = runners[0]
    try:
        server(app)
    except KeyboardInterrupt:
        log.info("interrupted; stopping")


def main(argv: list[str] | None = None) -> int:
    """The command line (``wsgiproxy serve CONFIG.ini [NAME=VALUE ...]``); returns the exit code."""
    parser = argparse.ArgumentParser(prog="wsgiproxy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="serve the app and server sections of a .ini file")
    p_serve.add_argument("config", help="a PasteDeploy .ini file")
    p_serve.add_argument("--name", action="append", dest="names",
                         help="serve only these server/app names (repeatable; default: all)")
    p_serve.add_argument("variables", nargs="*", metavar="NAME=VALUE",
                         help="values for %%(NAME)s in the config file")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.config, args.names, parse_vars(args.variables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
