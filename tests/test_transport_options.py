"""Transport options: typed in Python, converted from .ini strings by the deployment layer.

wsgiproxy.wsgiapp's TRANSPORT_OPTIONS turn .ini strings into the typed
arguments the transports take (wsgiproxy.converters does the parsing); a
transport refuses the strings themselves.
"""

import base64
import ssl

import pytest
from paste.deploy import loadapp

from wsgiproxy.exactproxy import ExactProxy
from wsgiproxy.httplib2transport import Httplib2Transport, parse_credentials, parse_size
from wsgiproxy.transport import HTTPTransport, make_transport
from wsgiproxy.wsgiapp import TRANSPORT_OPTIONS, convert


def test_ini_strings_are_converted_by_the_deployment_layer(tmp_path):
    settings = dict(
        transport="httplib2", connect_timeout="2.5", read_timeout="7", pool_size="3",
        idle_timeout="9", verify="false", cache_dir=str(tmp_path / "cache"),
        credentials="u:p alice@example.com:p%20w@backend:8080",
        proxy_info="http://a:b@proxy.example:3128", proxy_from_env="false",
        no_proxy="localhost, .internal", max_buffered_body="2M", max_request_body="512K")
    options = convert(settings, TRANSPORT_OPTIONS, "test")
    transport = make_transport(options.pop("transport"), **options)
    assert isinstance(transport, Httplib2Transport) and transport.streaming is False
    assert (transport.connect_timeout, transport.read_timeout, transport.pool_size,
            transport.idle_timeout) == (2.5, 7.0, 3, 9.0)
    assert transport.ssl_context().verify_mode == ssl.CERT_NONE
    assert transport.credentials == [("u", "p", ""), ("alice@example.com", "p w", "backend:8080")]
    assert (tmp_path / "cache").is_dir()
    proxy = transport.proxy_for("http", "backend.example")
    assert (proxy.host, proxy.port, proxy.authorization) == (
        "proxy.example", 3128, "Basic " + base64.b64encode(b"a:b").decode())
    assert transport.proxy_for("http", "db.internal") is None
    assert transport.proxy_for("https", "localhost") is None
    assert (transport.max_buffered_body, transport.max_request_body) == (2 * 1024 ** 2, 512 * 1024)
    # Empty and "none" .ini values mean "not set".
    plain = Httplib2Transport(**convert(
        dict(cache_dir="", proxy_info="none", credentials="None", max_request_body="none",
             ca_certs="none"), TRANSPORT_OPTIONS, "test"))
    assert plain.cache_dir is None and plain.proxy_for("http", "x") is None
    assert plain.credentials == []
    assert plain.max_request_body == plain.max_buffered_body == 10 * 1024 ** 2
    assert isinstance(ExactProxy(transport="httplib2").transport, Httplib2Transport)


def test_an_ini_file_configures_the_httplib2_transport(tmp_path):
    ini = tmp_path / "proxy.ini"
    ini.write_text("[app:main]\nuse = egg:WSGIProxy#main\nhref = http://127.0.0.1:1\n"
                   "transport = httplib2\nmax_buffered_body = 1K\nno_proxy = a, b\n"
                   "credentials = u:p@h\nproxy_from_env = yes\n")
    app = loadapp("config:" + str(ini))
    try:
        transport = app.transport
        assert isinstance(transport, Httplib2Transport)
        assert transport.max_buffered_body == 1024 and transport.credentials == [("u", "p", "h")]
        assert transport._no_proxy[:2] == ["a", "b"]
    finally:
        app.close()


def test_a_bad_credentials_value_is_named_but_never_shown():
    with pytest.raises(ValueError) as info:
        convert({"credentials": "ok:fine secret-without-colon"}, TRANSPORT_OPTIONS, "egg:x")
    assert "secret" not in str(info.value) and "fine" not in str(info.value)
    assert str(info.value).startswith("egg:x credentials: ") and "item 2" in str(info.value)


@pytest.mark.parametrize("option", [
    {"verify": "false"}, {"max_buffered_body": "2M"}, {"max_request_body": "1K"},
    {"credentials": "u:p"}, {"credentials": ["u:p"]}, {"no_proxy": "localhost"},
    {"proxy_from_env": "true"},
])
def test_options_are_typed_and_ini_strings_are_refused(option):
    """Strings from an .ini are the deployment layer's to convert (wsgiproxy.wsgiapp)."""
    with pytest.raises(TypeError):
        Httplib2Transport(**option)


def test_option_parsers():
    assert [parse_size(v) for v in (100, "100", "1k", "2 MiB", "1G", "3mb")] == [
        100, 100, 1024, 2 * 1024 ** 2, 1024 ** 3, 3 * 1024 ** 2]
    with pytest.raises(ValueError):
        parse_size("lots")
    assert parse_credentials([("u", "p"), ("v", "q", "Host:81")]) == [
        ("u", "p", ""), ("v", "q", "host:81")]
    assert parse_credentials("bob:p%40ss@h u%3Ax:p%20w") == [("bob", "p@ss", "h"), ("u:x", "p w", "")]
    with pytest.raises(ValueError) as info:
        parse_credentials("ok:fine secret-without-colon")
    assert "secret" not in str(info.value) and "item 2" in str(info.value)
    with pytest.raises(ValueError, match="only http://"):
        Httplib2Transport(proxy_info="socks5://127.0.0.1:1080")


def test_the_default_transport_refuses_a_string_for_verify_too():
    with pytest.raises(TypeError, match="verify must be True or False"):
        HTTPTransport(verify="false")
    assert convert({"verify": "false"}, TRANSPORT_OPTIONS, "test") == {"verify": False}
