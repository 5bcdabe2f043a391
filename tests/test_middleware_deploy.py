"""WSGIProxyMiddleware as a PasteDeploy filter (``egg:WSGIProxy#main``, wsgiapp.make_middleware)."""

import pytest

from wsgiproxy.protocol import MemoryNonceStore
from wsgiproxy.wsgiapp import make_middleware

from .middleware_helpers import SECRET, Recorder


def test_paste_filter_factory(tmp_path):
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    mw = make_middleware(
        Recorder(), {"secret_file": str(path), "trust_ips": "10.0.0.1", "here": "/x"},
        x_for="2", x_proto="0", forwarded="0", require_body_digest="true",
        allow_pickle_from_trusted_ips="yes", max_signed_body_size="100", prefix="",
        signature_window="30", nonce_cache_size="5")
    assert mw.keys.path == str(path)
    assert "10.0.0.1" in mw.trusted and "10.0.0.2" not in mw.trusted
    assert (mw.x_for, mw.x_proto, mw.max_signed_body_size, mw.signature_window) == (2, 0, 100, 30)
    assert mw.require_body_digest and mw.allow_pickle_from_trusted_ips and mw.prefix is None
    assert mw.nonce_store.max_entries == 5
    mw = make_middleware(Recorder(), {"trust_ips": "10.0.0.1"},
                                         trust_ips="192.0.2.0/24,  2001:db8::/32 10.1.0.0/16")
    assert "192.0.2.9" in mw.trusted and "2001:db8::1" in mw.trusted and "10.1.2.3" in mw.trusted
    assert "10.0.0.1" not in mw.trusted  # local setting wins over [DEFAULT]


def test_paste_filter_factory_nonce_store_and_errors():
    mw = make_middleware(Recorder(), {}, secret_file=None, trust_ips="*",
                                         nonce_store="wsgiproxy.protocol:MemoryNonceStore")
    assert isinstance(mw.nonce_store, MemoryNonceStore)
    with pytest.raises(TypeError, match="bogus.*x_forr|x_forr.*bogus"):
        make_middleware(Recorder(), {}, bogus="1", x_forr="1")
    with pytest.raises(ValueError, match="x_for"):
        make_middleware(Recorder(), {}, x_for="many")
    with pytest.raises(ValueError, match="require_body_digest"):
        make_middleware(Recorder(), {}, require_body_digest="perhaps")
