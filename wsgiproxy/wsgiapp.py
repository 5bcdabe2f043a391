"""PasteDeploy factories: ``.ini`` strings in, typed arguments out.

This is the deployment layer: the only place that knows configuration
files.  Entry points (``setup.py``) keep the original WSGIProxy names:
``egg:WSGIProxy#main`` (app and filter), ``#real_proxy``, plus ``#sample``.
"""

import re

from paste.deploy.converters import asbool, asint

__all__ = ["make_app", "make_middleware", "make_real_proxy", "make_sample_app",
           "make_spawn", "aslist", "convert"]


def aslist(value):
    """A list from a string of items separated by commas and/or whitespace."""
    if value is None:
        return []
    if isinstance(value, str):
        return [item for item in re.split(r"[\s,]+", value) if item]
    return list(value)


def _optional_int(value):
    return None if value in (None, "", "none", "None") else asint(value)


#: Options every transport-using component takes (and the ``httplib2`` ones).
TRANSPORT_OPTIONS = {
    "transport": str,
    "connect_timeout": float,
    "read_timeout": float,
    "pool_size": asint,
    "idle_timeout": float,
    "ca_certs": str,
    "verify": asbool,
    "cert_file": str,
    "key_file": str,
    # transport = httplib2 only; that transport parses these strings itself.
    "cache_dir": str,
    "credentials": str,
    "proxy_info": str,
    "proxy_from_env": asbool,
    "no_proxy": str,
    "max_buffered_body": str,
    "max_request_body": str,
}

APP_OPTIONS = dict(TRANSPORT_OPTIONS, **{
    "href": str,
    "secret_file": str,
    "string_keys": aslist,
    "unicode_keys": aslist,
    "json_keys": aslist,
    "pickle_keys": aslist,
    "preserve_host": asbool,
    "trusted_proxies": aslist,
    "forwarded": asbool,
    "rewrite_location": asbool,
    "allowed_methods": aslist,
    "max_body_size": _optional_int,
    "sign_body_max": asint,
})


def convert(settings, spec, what):
    """Convert ``.ini`` strings by ``spec``; unknown or unparseable options fail clearly."""
    unknown = sorted(set(settings) - set(spec))
    if unknown:
        raise TypeError("%s: unknown option(s) %s (known: %s)"
                        % (what, ", ".join(unknown), ", ".join(sorted(spec))))
    out = {}
    for name, value in settings.items():
        try:
            out[name] = spec[name](value) if isinstance(value, str) else value
        except ValueError as exc:
            raise ValueError("%s: option %s = %r: %s" % (what, name, value, exc)) from None
    return out


def make_app(global_conf, **settings):
    """``egg:WSGIProxy#main`` as an app: a :class:`~wsgiproxy.app.WSGIProxyApp`."""
    from .app import WSGIProxyApp
    if not settings.get("href"):
        raise ValueError("egg:WSGIProxy#main: you must give an href value")
    if "secret_file" not in settings and global_conf.get("secret_file"):
        settings["secret_file"] = global_conf["secret_file"]
    return WSGIProxyApp(**convert(settings, APP_OPTIONS, "egg:WSGIProxy#main"))


def make_middleware(app, global_conf, **settings):
    """``egg:WSGIProxy#main`` as a filter: a :class:`~wsgiproxy.middleware.WSGIProxyMiddleware`."""
    from .middleware import WSGIProxyMiddleware
    return WSGIProxyMiddleware.from_config(app, global_conf, **settings)


def make_real_proxy(global_conf, **settings):
    """``egg:WSGIProxy#real_proxy``: the exact proxy behind ``paste.httpserver``'s proxy keys."""
    from .exactproxy import ExactProxy, filter_paste_httpserver_proxy, proxy_exact_request
    options = convert(settings, TRANSPORT_OPTIONS, "egg:WSGIProxy#real_proxy")
    proxy = ExactProxy(**options) if options else proxy_exact_request
    return filter_paste_httpserver_proxy(proxy)


def make_sample_app(global_conf, **settings):
    """``egg:WSGIProxy#sample``: the sample backend that shows its environ."""
    from .sampleapp import make_sample_app as factory
    return factory(global_conf, **settings)


#: ``egg:WSGIProxy#spawn``: the child process options, plus the proxy's (no href).
SPAWN_OPTIONS = dict({k: v for k, v in APP_OPTIONS.items() if k != "href"}, **{
    "start_script": str,        # split like a shell command line; __PORT__ is the port
    "cwd": str,
    "script_env": str,          # NAME=VALUE items, shell-quoted, on one or more lines
    "spawned_port": _optional_int,
    "idle_shutdown": lambda v: None if v.strip().lower() in ("", "none", "0") else float(v),
    "start_timeout": float,
    "stop_timeout": float,
    "health_path": str,
    "workers": asint,
    "restart_backoff": float,
    "max_backoff": float,
    "handle_signals": asbool,
    "logger": str,              # a logger name
})


def make_spawn(global_conf, **settings):
    """``egg:WSGIProxy#spawn``: a :class:`~wsgiproxy.spawn.SpawningApplication`."""
    from .spawn import SpawningApplication
    if "secret_file" not in settings and global_conf.get("secret_file"):
        settings["secret_file"] = global_conf["secret_file"]
    return SpawningApplication(**convert(settings, SPAWN_OPTIONS, "egg:WSGIProxy#spawn"))
