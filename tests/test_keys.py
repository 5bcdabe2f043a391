"""keys.py: secret files, nonce stores and the nonce source (the stateful side)."""

import logging
import os
import threading

import pytest

from wsgiproxy.errors import NonceStoreFull
from wsgiproxy.keys import (
    MemoryNonceStore,
    NonceStore,
    PrivateKey,
    PublicKeys,
    SecretKeys,
    key_id_for,
    new_nonce,
)
from wsgiproxy.protocol.signature import check_nonce

# -- secret files -------------------------------------------------------------

def write(path, text):
    path.write_text(text)
    # make sure the change is seen even on coarse-mtime file systems
    st_ = os.stat(path)
    os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns + 1_000_000_000 * write.counter))
    write.counter += 1


write.counter = 1


def test_secret_file_format(tmp_path):
    path = tmp_path / "secret"
    write(path, "# rotated 2024-05\n  new-secret-0123456789  \n\n# old\nold-secret-0123456789\n")
    keys = SecretKeys(str(path))
    assert keys.key_ids == [key_id_for(b"new-secret-0123456789"),
                            key_id_for(b"old-secret-0123456789")]
    assert keys.signing_key() == (key_id_for(b"new-secret-0123456789"), b"new-secret-0123456789")
    assert keys.get(key_id_for(b"old-secret-0123456789")) == b"old-secret-0123456789"
    assert keys.get("0000000000000000") is None
    assert "new-secret" not in repr(keys)


def test_single_line_file_is_the_original_format(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(b"the-only-secret-012345\n")
    assert SecretKeys(path).signing_key()[1] == b"the-only-secret-012345"


@pytest.mark.parametrize("content", ["", "\n\n", "# only a comment\n", "   \n"])
def test_empty_secret_file_is_an_error(tmp_path, content):
    path = tmp_path / "secret"
    path.write_text(content)
    with pytest.raises(ValueError) as info:
        SecretKeys(str(path))
    assert str(path) in str(info.value)


def test_missing_secret_file_is_an_error_naming_the_path(tmp_path):
    with pytest.raises(ValueError, match="nope"):
        SecretKeys(str(tmp_path / "nope"))


def test_unreadable_secret_file_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="secret-dir"):
        (tmp_path / "secret-dir").mkdir()
        SecretKeys(str(tmp_path / "secret-dir"))


def test_secret_file_reload_and_bad_reload(tmp_path, caplog):
    path = tmp_path / "secret"
    write(path, "first-secret-0123456789\n")
    keys = SecretKeys(str(path), check_interval=0)
    first = keys.signing_key()
    write(path, "second-secret-0123456789\nfirst-secret-0123456789\n")
    assert keys.signing_key()[1] == b"second-secret-0123456789"
    assert keys.get(first[0]) == b"first-secret-0123456789"
    with caplog.at_level(logging.WARNING, logger="wsgiproxy.protocol"):
        write(path, "# half written\n")
        assert keys.signing_key()[1] == b"second-secret-0123456789"
        os.unlink(path)
        assert keys.signing_key()[1] == b"second-secret-0123456789"
        assert keys.signing_key()[1] == b"second-secret-0123456789"
    messages = [r.getMessage() for r in caplog.records
                if "read by other users" not in r.getMessage()]  # the file's mode: not this test
    assert len(messages) == 2, messages  # once per bad version, not once per request
    assert all("second-secret" not in m and "half written" not in m for m in messages)
    write(path, "third-secret-0123456789\n")
    assert keys.signing_key()[1] == b"third-secret-0123456789"


def test_reload_is_rate_limited(tmp_path):
    path = tmp_path / "secret"
    write(path, "first-secret-0123456789\n")
    keys = SecretKeys(str(path), check_interval=3600)
    write(path, "second-secret-0123456789\n")
    assert keys.signing_key()[1] == b"first-secret-0123456789"


def test_short_secret_warns(tmp_path, caplog):
    path = tmp_path / "secret"
    path.write_text("short\n")
    with caplog.at_level(logging.WARNING, logger="wsgiproxy.protocol"):
        SecretKeys(path)
    assert "shorter than 16" in caplog.text and "short\n" not in caplog.text


def test_from_secrets():
    keys = SecretKeys.from_secrets("one-secret-0123456789")
    assert keys.signing_key()[1] == b"one-secret-0123456789"
    with pytest.raises(ValueError):
        SecretKeys.from_secrets([])
    with pytest.raises(ValueError):
        SecretKeys.from_secrets([" "])


# -- Ed25519 key files (RFC 9421) ------------------------------------------------

def ed25519_pem():
    """A fresh Ed25519 key pair as PEM: (private PKCS#8, public SubjectPublicKeyInfo)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def test_private_and_public_key_files(tmp_path, caplog):
    private_pem, public_pem = ed25519_pem()
    other_private, other_public = ed25519_pem()
    (tmp_path / "key.pem").write_bytes(private_pem)
    os.chmod(tmp_path / "key.pem", 0o644)
    with caplog.at_level(logging.WARNING, logger="wsgiproxy.protocol"):
        private = PrivateKey(str(tmp_path / "key.pem"))
    assert "private key file" in caplog.text and "chmod 600" in caplog.text
    (tmp_path / "public.pem").write_bytes(b"# the proxy, 2024\n" + public_pem
                                          + b"\n# the next one\n" + other_public)
    os.chmod(tmp_path / "public.pem", 0o644)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="wsgiproxy.protocol"):
        public = PublicKeys(tmp_path / "public.pem")
    assert caplog.text == ""  # public keys may be read by anyone
    alg, key_id, sign = private.signer()
    assert public.key_ids == [key_id, PrivateKey.from_pem(other_private).key_id]
    assert public.verifier(key_id)[1](b"data", sign(b"data"))
    assert not public.verifier(key_id)[1](b"other", sign(b"data"))
    assert private.verifier(key_id)[1](b"data", sign(b"data"))
    assert private.verifier("x") is None and public.verifier("x") is None
    assert key_id in repr(private) and "BEGIN" not in repr(private)


def test_key_files_reload(tmp_path):
    first, first_public = ed25519_pem()
    second, second_public = ed25519_pem()
    path, public_path = tmp_path / "key.pem", tmp_path / "public.pem"
    write(path, first.decode())
    write(public_path, first_public.decode())
    private = PrivateKey(str(path), check_interval=0)
    public = PublicKeys(str(public_path), check_interval=0)
    old_id = private.key_id
    write(path, second.decode())
    write(public_path, (first_public + second_public).decode())
    assert private.key_id != old_id
    assert public.key_ids == [old_id, private.key_id]
    write(path, "half written")
    assert private.key_id == PrivateKey.from_pem(second).key_id  # kept


def test_bad_key_files(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    private_pem, public_pem = ed25519_pem()
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_public = ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    ec_private = ec_key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
    encrypted = serialization.load_pem_private_key(private_pem, None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"password"))
    cases = [(PrivateKey, b"", "no PEM private key"), (PrivateKey, public_pem, "no PEM private"),
             (PrivateKey, ec_private, "not an Ed25519 key"), (PrivateKey, encrypted, "encrypted"),
             (PublicKeys, b"# nothing\n", "no PEM public key"),
             (PublicKeys, public_pem + ec_public, "key 2 is not an Ed25519 key"),
             (PublicKeys, private_pem, "not a PUBLIC KEY"),
             (PublicKeys, public_pem.replace(b"MCow", b"MCox"), "not a valid public key")]
    for n, (cls, data, message) in enumerate(cases):
        path = tmp_path / ("key-%d.pem" % n)
        path.write_bytes(data)
        with pytest.raises(ValueError, match=message) as info:
            cls(str(path))
        assert str(path) in str(info.value)
    with pytest.raises(ValueError, match="missing.pem"):
        PublicKeys(str(tmp_path / "missing.pem"))


# -- nonce stores -------------------------------------------------------------

def test_nonce_store_interface():
    with pytest.raises(NotImplementedError):
        NonceStore().check_and_add("k", "n", 0)


def test_memory_nonce_store_expiry():
    clock = [1000.0]
    store = MemoryNonceStore(clock=lambda: clock[0])
    assert store.check_and_add("k", "a", 1010)
    assert not store.check_and_add("k", "a", 1010)
    assert store.check_and_add("other-key", "a", 1010)  # per key id
    clock[0] = 1010
    assert not store.check_and_add("k", "a", 1010)  # still live at its expiry second
    clock[0] = 1011
    assert len(store) == 0
    assert store.check_and_add("k", "a", 1020)


def test_memory_nonce_store_takes_any_ids_at_one_expiry_and_keeps_them_apart():
    """Real ids (16 + 32 hex digits) and any other strings, all expiring in the same second:
    the store's heap compares their keys, and no two pairs share one."""
    clock = [1000.0]
    store = MemoryNonceStore(clock=lambda: clock[0])
    kid, nonce = "0123456789abcdef", "0123456789abcdef" * 2
    pairs = [(kid, nonce), ("k", "a"), ("0123", "4567"), ("012", "34567"),
             ("x" * 11, "y" * 12), ("\udcff" * 8, "z" * 10)]
    for pair in pairs:
        assert store.check_and_add(*pair, 1010)
    for pair in pairs:
        assert not store.check_and_add(*pair, 1010)
    clock[0] = 1011
    assert len(store) == 0


def test_memory_nonce_store_is_bounded_and_fails_closed(caplog):
    clock = [0.0]
    store = MemoryNonceStore(max_entries=3, clock=lambda: clock[0])
    for nonce in "abc":
        assert store.check_and_add("k", nonce, 10)
    with caplog.at_level(logging.WARNING, logger="wsgiproxy.protocol"), \
            pytest.raises(NonceStoreFull):  # not "replayed": the nonce is new
        store.check_and_add("k", "d", 10)
    assert "full" in caplog.text
    assert not store.check_and_add("k", "a", 10)  # live entries were not forgotten
    clock[0] = 11
    assert store.check_and_add("k", "d", 20)
    assert len(store) == 1


def test_memory_nonce_store_is_thread_safe():
    store = MemoryNonceStore()
    results = []
    barrier = threading.Barrier(16)

    def worker():
        barrier.wait()
        results.append(store.check_and_add("k", "same", 2 ** 40))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 15 + [True]


def test_nonces_are_unique_in_threads_and_across_fork():
    seen = []
    lock = threading.Lock()

    def draw():
        mine = [new_nonce() for _ in range(2000)]
        with lock:
            seen.extend(mine)
    threads = [threading.Thread(target=draw) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == len(seen) == 8000
    assert all(check_nonce(n) for n in seen)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its nonces must differ from the parent's next ones
        os.close(read_end)
        os.write(write_end, " ".join(new_nonce() for _ in range(100)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        child = set(f.read().split())
    os.waitpid(pid, 0)
    parent = {new_nonce() for _ in range(100)}
    assert len(child) == 100 and not child & parent and not child & set(seen)


def test_a_secret_file_others_can_read_is_warned_about(tmp_path, caplog):
    path = tmp_path / "secret.txt"
    path.write_text("a-long-enough-secret-value\n")
    os.chmod(path, 0o600)
    with caplog.at_level("WARNING", logger="wsgiproxy"):
        SecretKeys(str(path))
    assert "can be read by other users" not in caplog.text
    os.chmod(path, 0o644)
    with caplog.at_level("WARNING", logger="wsgiproxy"):
        SecretKeys(str(path))
    assert "can be read by other users (mode 644)" in caplog.text


def test_rfc9421_hmac_signing_follows_a_reloaded_secret_file(tmp_path):
    """HMACKeys remembers its signer per signing key: a rotated file signs with the new
    secret (and its key id) from the next request on."""
    import hashlib
    import hmac

    from wsgiproxy.protocol import rfc9421
    path = tmp_path / "secret"
    write(path, "first-secret-0123456789\n")
    signing = rfc9421.HMACKeys(SecretKeys(str(path), check_interval=0))
    for secret in (b"first-secret-0123456789", b"second-secret-0123456789"):
        if secret.startswith(b"second"):
            write(path, "second-secret-0123456789\nfirst-secret-0123456789\n")
        for _ in range(2):
            alg, key_id, sign = signing.signer()
            assert (alg, key_id) == ("hmac-sha256", key_id_for(secret))
            assert sign(b"base") == hmac.new(secret, b"base", hashlib.sha256).digest()
