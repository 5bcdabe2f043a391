"""Every public import path of WSGIProxy 1.0.0.dev0 before the reshaping still works.

The names below are the ``__all__`` of each public module as it was before
the package was cut into smaller modules (issue 14), frozen here: old code
and ``.ini`` files must keep working.  ``wsgiproxy.forwarding`` is not among
them: it is the proxies' internal glue, and its ``forward()`` (eleven
parameters, two callbacks) became ``send()``/``relay()``.
"""

import importlib
from importlib.metadata import distribution

import pytest

from wsgiproxy import errors

OLD_ALL = {
    'wsgiproxy.app': [
        'BodyTooLarge', 'WSGIProxyApp',
    ],
    'wsgiproxy.middleware': [
        'WSGIProxyMiddleware',
    ],
    'wsgiproxy.exactproxy': [
        'ExactProxy', 'filter_paste_httpserver_proxy', 'filter_paste_httpserver_proxy_environ',
        'proxy_exact_request',
    ],
    'wsgiproxy.spawn': [
        'SpawningApplication',
    ],
    'wsgiproxy.transport': [
        'BODY_METHODS', 'BackendError', 'BackendTimeout', 'BackendUnavailable',
        'BadBackendResponse', 'HOP_BY_HOP', 'HTTPTransport', 'IDEMPOTENT_METHODS',
        'InvalidRequest', 'NON_NOMINATING_TOKENS', 'RequestBodyError', 'Response', 'Transport',
        'UNFORWARDED_REQUEST_HEADERS', 'connection_tokens', 'forget_connections_after_fork',
        'make_ssl_context', 'make_transport', 'parse_response_head', 'request_head',
    ],
    'wsgiproxy.protocol': [
        'DEFAULT_MAX_SIGNED_BODY', 'DEFAULT_SIGNATURE_WINDOW', 'HEADER_PREFIX', 'KEY_KINDS',
        'LOOPBACK', 'MemoryNonceStore', 'NonceStore', 'PICKLE_PROTOCOL', 'PROTOCOL_VERSION',
        'ProtocolError', 'SIGNATURE_HEADER', 'SecretKeys', 'Signature', 'SignatureError',
        'TrustedNetworks', 'VERSION_HEADER', 'canonical_header_name', 'canonical_request',
        'check_header_value', 'decode_key_header', 'decode_path_header', 'decode_value',
        'default_port', 'encode_key_headers', 'encode_path_header', 'encode_value',
        'environ_key', 'format_forwarded', 'forwarded_node', 'is_signed_header', 'join_host',
        'key_header_kind', 'key_id_for', 'nth_from_right', 'parse_forwarded', 'parse_node',
        'parse_signature', 'sign_request', 'split_host', 'verify_request',
    ],
    'wsgiproxy.redisstore': [
        'NonceStoreUnavailable', 'RedisNonceStore', 'URL_SCHEMES',
    ],
    'wsgiproxy.wsgiapp': [
        'aslist', 'convert', 'make_app', 'make_middleware', 'make_real_proxy',
        'make_sample_app', 'make_spawn', 'nonce_store',
    ],
    'wsgiproxy.httplib2transport': [
        'Httplib2Transport', 'RequestTooLarge', 'ResponseTooLarge', 'parse_credentials',
        'parse_size',
    ],
    'wsgiproxy.errors': [
        'error_response', 'wants_json',
    ],
    'wsgiproxy.sampleapp': [
        'application', 'make_demo_user_filter', 'make_sample_app',
    ],
}


@pytest.mark.parametrize("module", sorted(OLD_ALL))
def test_every_old_name_imports_from_its_old_path(module):
    mod = importlib.import_module(module)
    missing = [name for name in OLD_ALL[module] if not hasattr(mod, name)]
    assert missing == []


@pytest.mark.parametrize("module", sorted(OLD_ALL))
def test_old_exception_names_are_the_errors_of_the_one_root(module):
    """``except wsgiproxy.transport.BackendError`` catches what the package raises."""
    mod = importlib.import_module(module)
    for name in OLD_ALL[module]:
        value = getattr(mod, name)
        if isinstance(value, type) and issubclass(value, Exception) and name in errors.__all__:
            assert value is getattr(errors, name)
            assert issubclass(value, errors.WSGIProxyError)


def test_every_entry_point_loads():
    """``egg:WSGIProxy#main`` and the others, as PasteDeploy and the console script find them."""
    found = list(distribution("WSGIProxy").entry_points)
    assert sorted((ep.group, ep.name) for ep in found) == [
        ("console_scripts", "wsgiproxy"),
        ("paste.app_factory", "main"), ("paste.app_factory", "metrics"),
        ("paste.app_factory", "real_proxy"),
        ("paste.app_factory", "sample"), ("paste.app_factory", "spawn"),
        ("paste.filter_app_factory", "demo_user"), ("paste.filter_app_factory", "main"),
    ]
    for ep in found:
        assert callable(ep.load())
