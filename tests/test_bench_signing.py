"""bench/signing_cost.py replaces what it says it replaces (nothing is timed here).

Its variants patch the places signing looks up; if signing moved, a patch
would silently miss and the benchmark would measure the wrong thing.  Each
variant's request is built here and its signature looked at.
"""
import base64
import importlib.util
import os
import sys

import pytest

from wsgiproxy.app import WSGIProxyApp
from wsgiproxy.protocol import SIGNATURE_HEADER

from .servers import ROOT

BENCH = os.path.join(ROOT, "bench")


@pytest.fixture(scope="module")
def signing_cost():
    sys.path.insert(0, BENCH)
    try:
        spec = importlib.util.spec_from_file_location(
            "bench_signing_cost", os.path.join(BENCH, "signing_cost.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(BENCH)
    return module


def _signature(app):
    environ = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/1k",
               "QUERY_STRING": "", "REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": "http",
               "SERVER_NAME": "front", "SERVER_PORT": "80", "HTTP_HOST": "front"}
    _, _, headers, _, _ = app.request_for(environ, "http", "front")
    found = {name.lower(): value for name, value in headers}
    return found.get(SIGNATURE_HEADER.lower()) or found["signature"]


@pytest.mark.parametrize("signature_format", ["v1", "rfc9421", "rfc9421-ed25519"])
def test_each_variant_replaces_what_it_names(signing_cost, signature_format, tmp_path):
    if signature_format == "rfc9421-ed25519":
        pytest.importorskip("cryptography")
        options = dict(private_key_file=signing_cost.ed25519_key_file(str(tmp_path)),
                       signature_format="rfc9421")
    else:
        secret = tmp_path / "secret"
        secret.write_text("0123456789abcdef0123456789abcdef\n")
        secret.chmod(0o600)
        options = dict(secret_file=str(secret), signature_format=signature_format[:7])
    app = WSGIProxyApp("http://127.0.0.1:9", **options)
    patches = signing_cost.Patches(signature_format)
    seen = {}
    try:
        for variant in signing_cost.VARIANTS[1:]:
            patches.apply(variant)
            seen[variant] = _signature(app)
    finally:
        patches.restore()
    fixed = (signing_cost.FIXED_SIGNATURE if signature_format == "v1"
             else dict(signing_cost.FIXED_RFC9421)["Signature"])
    constant = bytes(32 if "ed25519" not in signature_format else 64)
    signature_of_constant = (
        base64.urlsafe_b64encode(constant).rstrip(b"=").decode() if signature_format == "v1"
        else ":%s:" % base64.b64encode(constant).decode())
    assert seen["signed, signing free"] == fixed
    assert seen["signed, HMAC free"].endswith(signature_of_constant)
    for value in (seen["signed"], _signature(app)):  # the real signing, patched and restored
        assert value != fixed and not value.endswith(signature_of_constant)
