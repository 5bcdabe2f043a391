"""The wsgiproxy.protocol package as a whole: its edge, its old import paths, its layering.

The codecs, signatures and Forwarded parsing are tested per module
(test_protocol_headers.py, test_protocol_signature.py,
test_protocol_forwarded.py); secret files and nonce stores in test_keys.py.
"""

import ast
import os
import subprocess
import sys
import time

import pytest

import wsgiproxy
from wsgiproxy import errors, keys, protocol
from wsgiproxy.protocol import forwarded, headers, signature

NONCE = "0123456789abcdef0123456789abcdef"
KEYS = keys.SecretKeys.from_secrets(["first-secret-0123456789"])
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# wsgiproxy.protocol.__all__ before the package was split, and the other names
# imported from it (middleware.py, redisstore.py, tests, docs).
OLD_ALL = [
    "PROTOCOL_VERSION", "HEADER_PREFIX", "VERSION_HEADER", "SIGNATURE_HEADER", "KEY_KINDS",
    "DEFAULT_SIGNATURE_WINDOW", "DEFAULT_MAX_SIGNED_BODY", "PICKLE_PROTOCOL",
    "ProtocolError", "SignatureError",
    "canonical_header_name", "environ_key", "check_header_value",
    "encode_value", "decode_value", "encode_key_headers", "decode_key_header", "key_header_kind",
    "encode_path_header", "decode_path_header",
    "is_signed_header", "canonical_request", "sign_request", "verify_request",
    "parse_signature", "Signature",
    "SecretKeys", "key_id_for", "NonceStore", "MemoryNonceStore",
    "parse_forwarded", "format_forwarded", "forwarded_node", "parse_node",
    "nth_from_right", "TrustedNetworks", "LOOPBACK", "split_host", "join_host", "default_port",
    "FORWARDED_FOR", "FORWARDED_SERVER", "FORWARDED_SCHEME", "FORWARDED_SCRIPT_NAME",
    "TRAVERSAL_PATH", "TRAVERSAL_QUERY_STRING", "FORWARDED", "FORWARDED_PROTO", "FORWARDED_HOST",
    "FORWARDED_PORT", "FORWARDED_PREFIX", "SCRIPT_NAME_HEADER",
]
ALSO_IMPORTED = ["DEFAULT_NONCE_CAPACITY", "NonceStoreFull", "new_nonce"]


def test_the_old_names_import_from_the_package():
    assert sorted(protocol.__all__) == sorted(OLD_ALL)
    namespace = {}
    exec("from wsgiproxy.protocol import *", namespace)
    assert set(OLD_ALL) <= set(namespace)
    homes = (headers, signature, forwarded, keys, errors)
    for name in OLD_ALL + ALSO_IMPORTED:
        if name in ("sign_request", "verify_request"):
            continue  # the edge's own functions
        [home] = [m for m in homes if name in m.__all__]
        assert getattr(protocol, name) is getattr(home, name), name


def test_sign_request_reads_the_clock_and_draws_a_nonce():
    before = int(time.time())
    first = protocol.parse_signature(protocol.sign_request(KEYS, "GET", "h", "/", "", []))
    second = protocol.parse_signature(protocol.sign_request(KEYS, "GET", "h", "/", "", []))
    after = time.time()
    assert before <= first.timestamp <= after
    assert first.nonce != second.nonce
    assert signature.check_nonce(first.nonce) == first.nonce


def test_sign_request_uses_the_callers_clock_and_nonce():
    value = protocol.sign_request(KEYS, "GET", "h", "/", "", [], now=1700000000.9, nonce=NONCE)
    assert value == signature.sign(KEYS, "GET", "h", "/", "", [], now=1700000000, nonce=NONCE)
    for bad in ("XYZ", NONCE.upper()):
        with pytest.raises(ValueError):
            protocol.sign_request(KEYS, "GET", "h", "/", "", [], nonce=bad)


def test_verify_request_reads_the_clock():
    fresh = protocol.sign_request(KEYS, "GET", "h", "/", "", [])
    assert protocol.verify_request(KEYS, fresh, "GET", "h", "/", "", {}) == KEYS.key_ids[0]
    old = protocol.sign_request(KEYS, "GET", "h", "/", "", [], now=time.time() - 1000)
    with pytest.raises(protocol.SignatureError) as info:
        protocol.verify_request(KEYS, old, "GET", "h", "/", "", {})
    assert info.value.reason == "expired"
    assert protocol.verify_request(KEYS, old, "GET", "h", "/", "", {}, now=time.time() - 1000)


@pytest.mark.parametrize("secret", ["first-secret-0123456789", b"first-secret-0123456789"])
def test_a_bare_secret_is_keys(secret):
    value = protocol.sign_request(secret, "GET", "h", "/", "", [], now=1700000000, nonce=NONCE)
    assert value == protocol.sign_request(KEYS, "GET", "h", "/", "", [], now=1700000000,
                                          nonce=NONCE)
    assert protocol.verify_request(secret, value, "GET", "h", "/", "", {},
                                   now=1700000000) == KEYS.key_ids[0]


# Modules that would bring I/O, clocks, randomness or concurrency in.
STATEFUL = {"os", "time", "threading", "socket", "random", "secrets", "select", "selectors",
            "io", "asyncio", "multiprocessing", "subprocess", "logging", "datetime", "uuid"}


@pytest.mark.parametrize("module", [headers, signature, forwarded])
def test_the_inner_modules_are_sans_io(module):
    with open(module.__file__) as f:
        tree = ast.parse(f.read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                imported.add(node.module.split(".")[0])
            elif node.level == 2:  # from ..x import: only the pure parts of the package
                assert node.module in ("abnf", "converters", "errors"), node.module
        elif isinstance(node, ast.Name):
            assert node.id != "open", "%s opens a file" % module.__name__
    assert not imported & STATEFUL, imported & STATEFUL


def run_python(code):
    """Run ``code`` in a fresh interpreter, with this checkout's wsgiproxy first on the path."""
    path = os.path.dirname(wsgiproxy.__path__[0])
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO,
                   env=dict(os.environ, PYTHONPATH=path))


@pytest.mark.parametrize("first", ["wsgiproxy.keys", "wsgiproxy.redisstore",
                                   "wsgiproxy.protocol.signature", "wsgiproxy.protocol"])
def test_any_import_order_works(first):
    run_python("import %s\n"
               "from wsgiproxy.keys import SecretKeys\n"
               "from wsgiproxy.protocol import SecretKeys as reexported, sign_request\n"
               "assert reexported is SecretKeys\n" % first)


def test_keys_does_not_load_the_protocol_package():
    """No import cycle: the stateful layer needs nothing of the wire protocol."""
    run_python("import sys, wsgiproxy.keys\nassert 'wsgiproxy.protocol' not in sys.modules\n")
