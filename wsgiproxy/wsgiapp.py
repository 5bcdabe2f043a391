"""PasteDeploy factories: ``.ini`` strings in, typed arguments out.

This is the deployment layer: the only place that knows configuration
files.  Entry points (``setup.py``) keep the original WSGIProxy names:
``egg:WSGIProxy#main`` (app and filter), ``#real_proxy``, plus ``#sample``.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from paste.deploy.converters import asbool, asint  # type: ignore[import-untyped]

from .configfile import did_you_mean, locate
from .converters import aslist, parse_credentials, parse_pairs, parse_size
from .errors import ConfigError, UnknownOption

__all__ = ["aslist", "configuring", "convert", "hrefs", "make_app", "make_middleware", "make_real_proxy",
           "make_sample_app", "make_spawn", "nonce_store"]


def _optional_int(value: str | None) -> int | None:
    return None if value in (None, "", "none", "None") else asint(value)


def _optional(converter: Callable[[str], Any]) -> Callable[[str], Any]:
    """``converter``, with ``none`` (any case) meaning "not set"."""
    def convert_or_none(value: str) -> Any:
        return None if value.lower() == "none" else converter(value)
    return convert_or_none


_optional_str = _optional(str)


def hrefs(value: str) -> str | list[str]:
    """One backend URL, or several separated by whitespace or newlines (a list)."""
    urls = value.split()
    return urls[0] if len(urls) == 1 else urls


#: Options every transport-using component takes (and the ``httplib2`` ones).
TRANSPORT_OPTIONS = {
    "transport": str,
    "connect_timeout": float,
    "read_timeout": float,
    "pool_size": asint,
    "idle_timeout": float,
    "ca_certs": _optional_str,
    "verify": asbool,
    "cert_file": _optional_str,
    "key_file": _optional_str,
    # transport = httplib2 only.
    "cache_dir": _optional_str,
    "credentials": _optional(parse_credentials),
    "proxy_info": _optional_str,
    "proxy_from_env": asbool,
    "no_proxy": aslist,
    "max_buffered_body": parse_size,
    "max_request_body": _optional(parse_size),
}

#: WebSocket (Upgrade) tunnels: the app's and the exact proxy's (docs/websockets.rst).
TUNNEL_OPTIONS = {
    "max_tunnels": asint,
    "websocket_idle_timeout": _optional(float),
}

#: Request ids and the access log: the app's, the filter's (docs/operations.rst).
_OBSERVE = {
    "request_ids": asbool,
    "request_id_header": asbool,
    "access_log": asbool,
    "access_log_format": str,
    "metrics": asbool,
}

# Options whose value is never repeated in an error message (it holds a password).
_SECRET_OPTIONS = frozenset(["credentials"])

APP_OPTIONS = {
    **TRANSPORT_OPTIONS,
    **TUNNEL_OPTIONS,
    **_OBSERVE,
    "href": hrefs,
    "secret_file": str,
    "string_keys": aslist,
    "unicode_keys": aslist,
    "json_keys": aslist,
    "pickle_keys": aslist,
    "preserve_host": asbool,
    "trusted_proxies": aslist,
    "forwarded": asbool,
    "rewrite_location": asbool,
    "cookie_path": parse_pairs,     # one "FROM TO" pair per line
    "cookie_domain": parse_pairs,
    "allowed_methods": aslist,
    "max_body_size": _optional_int,
    "sign_body_max": asint,
    # RFC 9421 signatures and bound responses (docs/protocol.rst).
    "signature_format": str,
    "private_key_file": str,
    "verify_responses": asbool,
    "response_public_key_file": str,
    # Several backends (docs/backends.rst).
    "balance": str,
    "max_fails": asint,
    "fail_timeout": float,
    "next_upstream": str,
    "next_upstream_tries": asint,
    "next_upstream_timeout": float,
    "retry_budget": float,
}


def proxy_count(value: str) -> int:
    """A number of trusted proxies; ``true``/``false`` (and yes/no, on/off) are 1 and 0.

    The filter's ``forwarded`` is a count, the app's a switch: the same
    spelling works for both.
    """
    if value.isdigit():
        return int(value)
    return 1 if asbool(value) else 0


def nonce_store(value: str) -> Any:
    """A nonce store from its ``.ini`` spelling.

    ``memory`` (the default), a ``redis://`` (``rediss://``, ``unix://``)
    URL for a :class:`~wsgiproxy.redisstore.RedisNonceStore`, or
    ``package.module:name`` naming a store, its class or a factory.
    """
    if value == "memory":
        return None
    if "://" in value:
        from .redisstore import RedisNonceStore  # redis-py is an optional extra
        return RedisNonceStore(value)
    module_name, _, attr = value.partition(":")
    if not attr:
        raise ValueError("nonce_store must be memory, a redis:// URL or "
                         "'package.module:name', not %r" % value)
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if isinstance(obj, type) or not hasattr(obj, "check_and_add"):
        obj = obj()  # a class or factory
    return obj


def convert(settings: Mapping[str, Any], spec: Mapping[str, Callable[[str], Any]],
            what: str) -> dict[str, Any]:
    """Convert ``.ini`` strings by ``spec``; unknown or unparseable options fail clearly.

    An empty value (``prefix =``) means the option's default, as does a
    converter's ``None``.

    :raises UnknownOption: for names not in ``spec`` (a close one is suggested).
    :raises ConfigError: naming the option a converter refused.
    """
    unknown = sorted(set(settings) - set(spec))
    if unknown:
        close = {name: did_you_mean(name, spec) for name in unknown}
        hints = ["%s for %s" % (close[n], n) if len(unknown) > 1 else str(close[n])
                 for n in unknown if close[n]]
        problem = "unknown option%s" % ("s" if len(unknown) > 1 else "")
        owners = {n: [entry for entry, other in _specs().items()
                      if n in other and other is not spec] for n in unknown if not close[n]}
        elsewhere = ["%s is an option of %s" % (n, " and ".join(owners[n]))
                     for n in unknown if owners.get(n)]
        if hints:
            problem += "; did you mean %s?" % ", ".join(hints)
        if elsewhere:
            problem += "; " + "; ".join(elsewhere)
        if not hints and not elsewhere:
            problem += " (known: %s)" % ", ".join(sorted(spec))
        raise UnknownOption(", ".join(unknown), problem, where=what)
    out = {}
    for name, value in settings.items():
        if isinstance(value, str):
            value = value.strip()
            if not value:
                continue
            try:
                value = spec[name](value)
            except (ValueError, ImportError, AttributeError) as exc:
                shown = None if name in _SECRET_OPTIONS else value
                raise ConfigError(name, str(exc), shown, what) from None
        if value is not None:
            out[name] = value
    return out


def _specs() -> dict[str, Mapping[str, Callable[[str], Any]]]:
    """The options of each entry point, to say where an option that is unknown here belongs."""
    return {"egg:WSGIProxy#main": APP_OPTIONS,
            "the egg:WSGIProxy#main filter": MIDDLEWARE_OPTIONS,
            "egg:WSGIProxy#spawn": SPAWN_OPTIONS}


@contextlib.contextmanager
def configuring(global_conf: Mapping[str, Any] | None, settings: Mapping[str, Any],
                entry: str) -> Iterator[None]:
    """Around a factory: what building it raises becomes one located ConfigError line.

    The line names the file, the section and the option
    (:func:`wsgiproxy.configfile.locate`); the original error is its cause.

    :param global_conf: PasteDeploy's global configuration (``__file__``).
    :param settings: the options the factory got, before it adds defaults.
    :param entry: the entry point, ``egg:WSGIProxy#main``.
    """
    given = dict(settings)
    try:
        yield
    except (ValueError, TypeError) as exc:
        located = locate(exc, given, global_conf or {}, entry, _SECRET_OPTIONS)
        if located is exc:
            raise
        raise located from exc


def make_app(global_conf: Mapping[str, str], **settings: Any) -> Any:
    """``egg:WSGIProxy#main`` as an app: a :class:`~wsgiproxy.app.WSGIProxyApp`."""
    from .app import WSGIProxyApp
    with configuring(global_conf, settings, "egg:WSGIProxy#main"):
        if not settings.get("href"):
            raise ConfigError("href", "missing: give the backend's URL")
        if "secret_file" not in settings and global_conf.get("secret_file"):
            settings["secret_file"] = global_conf["secret_file"]
        return WSGIProxyApp(**convert(settings, APP_OPTIONS, "egg:WSGIProxy#main"))


MIDDLEWARE_OPTIONS = {
    **_OBSERVE,
    "secret_file": str,
    "trust_ips": aslist,
    "prefix": str,
    "pop_prefix": str,
    "scheme": str,
    "host": str,
    "domain": str,
    "port": str,
    "x_for": asint,
    "x_proto": asint,
    "x_host": asint,
    "x_port": asint,
    "x_prefix": asint,
    "forwarded": proxy_count,
    "front_proxy_ips": aslist,
    "signature_window": asint,
    "nonce_store": nonce_store,
    "nonce_cache_size": asint,
    "require_signature": asbool,
    "require_body_digest": asbool,
    "max_signed_body_size": asint,
    "allow_pickle_from_trusted_ips": asbool,
    "signature_formats": aslist,
    "public_key_file": str,
    "sign_responses": asbool,
    "response_key_file": str,
}


def make_middleware(app: Any, global_conf: Mapping[str, str] | None, **settings: Any) -> Any:
    """``egg:WSGIProxy#main`` as a filter: a :class:`~wsgiproxy.middleware.WSGIProxyMiddleware`.

    ``secret_file`` and ``trust_ips`` fall back to ``[DEFAULT]``, as in the
    original WSGIProxy.
    """
    from .middleware import WSGIProxyMiddleware
    defaults = global_conf or {}
    with configuring(global_conf, settings, "egg:WSGIProxy#main (filter)"):
        for name in ("secret_file", "trust_ips"):
            if not settings.get(name) and defaults.get(name):
                settings[name] = defaults[name]
        return WSGIProxyMiddleware(app, **convert(settings, MIDDLEWARE_OPTIONS,
                                                  "egg:WSGIProxy#main (filter)"))


def make_metrics_app(global_conf: Mapping[str, str], **settings: Any) -> Any:
    """``egg:WSGIProxy#metrics``: the Prometheus metrics of this process (or of every
    worker, with ``PROMETHEUS_MULTIPROC_DIR``); loading it turns counting on."""
    from .metrics import enable, metrics_app
    convert(settings, {}, "egg:WSGIProxy#metrics")  # it takes no options
    enable()
    return metrics_app


def make_real_proxy(global_conf: Mapping[str, str], **settings: Any) -> Any:
    """``egg:WSGIProxy#real_proxy``: the exact proxy behind ``paste.httpserver``'s proxy keys."""
    from .exactproxy import ExactProxy, filter_paste_httpserver_proxy, proxy_exact_request
    with configuring(global_conf, settings, "egg:WSGIProxy#real_proxy"):
        options = convert(settings, {**TRANSPORT_OPTIONS, **TUNNEL_OPTIONS},
                          "egg:WSGIProxy#real_proxy")
        proxy = ExactProxy(**options) if options else proxy_exact_request
    return filter_paste_httpserver_proxy(proxy)


def make_sample_app(global_conf: Mapping[str, str], **settings: Any) -> Any:
    """``egg:WSGIProxy#sample``: the sample backend that shows its environ."""
    from .sampleapp import make_sample_app as factory
    with configuring(global_conf, settings, "egg:WSGIProxy#sample"):
        return factory(global_conf, **settings)


#: ``egg:WSGIProxy#spawn``: the child process options, plus the proxy's (no href).
SPAWN_OPTIONS = {
    **{k: v for k, v in APP_OPTIONS.items() if k != "href"},
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
}


def make_spawn(global_conf: Mapping[str, str], **settings: Any) -> Any:
    """``egg:WSGIProxy#spawn``: a :class:`~wsgiproxy.spawn.SpawningApplication`."""
    from .spawn import SpawningApplication
    with configuring(global_conf, settings, "egg:WSGIProxy#spawn"):
        if "secret_file" not in settings and global_conf.get("secret_file"):
            settings["secret_file"] = global_conf["secret_file"]
        return SpawningApplication(**convert(settings, SPAWN_OPTIONS, "egg:WSGIProxy#spawn"))
