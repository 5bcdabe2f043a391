"""The stateful side of signatures: secret files, nonce stores and the nonce source.

:mod:`wsgiproxy.protocol` is sans-IO; whatever reads files, holds locks,
reads the clock on its own or draws random numbers lives here:

* :class:`SecretKeys`: the shared secrets of a secret file, re-read when the
  file changes (key rotation without downtime);
* :class:`PrivateKey` and :class:`PublicKeys`: Ed25519 keys in PEM files for
  RFC 9421 signatures (the ``cryptography`` package, imported when one is
  used), re-read the same way;
* :class:`NonceStore` (the interface) and :class:`MemoryNonceStore` (one
  process), which remember accepted nonces so a request cannot be replayed
  (:class:`~wsgiproxy.redisstore.RedisNonceStore` shares them in Redis);
* :data:`new_nonce`: the process-wide source of nonces for signing.

:func:`key_id_for` and :func:`ed25519_key_id` live here too, although key
ids are part of the wire format: the key classes need them, and :mod:`wsgiproxy.protocol` imports
this module (for its defaults and old import paths), never the other way
round.  This module knows nothing of HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import itertools
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from .errors import NonceStoreFull

__all__ = [
    "DEFAULT_NONCE_CAPACITY", "MemoryNonceStore", "NonceStore", "PrivateKey", "PublicKeys",
    "SecretKeys", "ed25519_key_id", "key_id_for", "new_nonce", "new_request_id",
]

# The logger these messages have always gone to (when this code lived in
# wsgiproxy.protocol): logging configurations may name it.
log = logging.getLogger("wsgiproxy.protocol")

#: Default capacity of MemoryNonceStore: a 300 s window at ~1,500 signed
#: requests/s per process.  About 200 bytes per live nonce, so at most ~100 MB.
DEFAULT_NONCE_CAPACITY = 500000


def key_id_for(secret: bytes) -> str:
    """The public id of a secret: 16 hex characters of ``sha256(b"wsgiproxy-key-id:" + secret)``."""
    return hashlib.sha256(b"wsgiproxy-key-id:" + secret).hexdigest()[:16]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def ed25519_key_id(public_key: bytes) -> str:
    """The key id of an Ed25519 public key (its 32 raw bytes): the RFC 7638 JWK
    thumbprint of the OKP key (RFC 8037), unpadded base64url of
    ``sha256('{"crv":"Ed25519","kty":"OKP","x":"<base64url of the key>"}')``."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key has 32 bytes")
    jwk = '{"crv":"Ed25519","kty":"OKP","x":"%s"}' % _b64url(public_key)
    return _b64url(hashlib.sha256(jwk.encode("ascii")).digest())


# ---------------------------------------------------------------------------
# Secrets

KeyPairs = list[tuple[str, bytes]]


def _parse_secrets(data: bytes) -> KeyPairs:
    secrets_: list[bytes] = []
    for line in data.splitlines():
        line = line.strip()
        if line and not line.startswith(b"#") and line not in secrets_:
            secrets_.append(line)
    return [(key_id_for(secret), secret) for secret in secrets_]


class _KeyFile:
    """A key file, re-read when its mtime, size or inode changes (at most every
    ``check_interval`` seconds).  Subclasses parse it (``_parse``) into a state
    and say what it is (``what``) and whether it is private."""

    what = "key file"
    private = True
    path: str | None
    check_interval: float | None
    _stat_key: tuple[int, int, int] | None

    def __init__(self, path: str | os.PathLike[str], check_interval: float = 1.0) -> None:
        self.path = os.fspath(path)
        self.check_interval = check_interval
        self._lock = threading.Lock()
        self._stat_failed = False
        try:
            self._state, self._stat_key = self._read()
        except OSError as exc:
            raise ValueError("cannot read %s %r: %s" % (self.what, self.path,
                                                        exc.strerror or exc)) from None
        self._next_check = time.monotonic() + check_interval

    def _in_memory(self, state: Any) -> None:
        self.path = None
        self.check_interval = None
        self._lock = threading.Lock()
        self._stat_failed = False
        self._stat_key = None
        self._state = state
        self._next_check = float("inf")

    def _parse(self, data: bytes) -> Any:
        raise NotImplementedError

    def _count(self) -> int:
        return len(self._state[0])

    def _read(self) -> tuple[Any, tuple[int, int, int]]:
        assert self.path is not None
        with open(self.path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
        state = self._parse(data)
        if self.private and st.st_mode & 0o077 and os.name == "posix":
            log.warning("%s %s can be read by other users (mode %03o): whoever reads "
                        "it can sign requests; chmod 600 it", self.what, self.path,
                        st.st_mode & 0o777)
        return state, (st.st_mtime_ns, st.st_size, st.st_ino)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        with self._lock:
            if now < self._next_check:
                return
            assert self.check_interval is not None
            self._next_check = now + self.check_interval
            try:
                st = os.stat(self.path)  # type: ignore[arg-type]
            except OSError as exc:
                if not self._stat_failed:
                    log.warning("%s %s is not readable (%s); keeping the keys loaded "
                                "before", self.what, self.path, exc.strerror or exc)
                    self._stat_failed = True
                return
            self._stat_failed = False
            stat_key = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stat_key == self._stat_key:
                return
            try:
                self._state, self._stat_key = self._read()
            except (OSError, ValueError) as exc:
                self._stat_key = stat_key  # warn once per version of the file
                log.warning("%s %s could not be reloaded (%s); keeping the %d key(s) "
                            "loaded before", self.what, self.path,
                            getattr(exc, "strerror", None) or exc, self._count())
                return
            log.info("%s %s reloaded: %d key(s)", self.what, self.path, self._count())


class SecretKeys(_KeyFile):
    """The shared secrets of a secret file: the first signs, any of them verifies.

    Each non-empty line not starting with ``#`` is one secret (surrounding
    whitespace stripped), so a one-line file is the original WSGIProxy
    format and several lines allow rotation without downtime: add the new
    key as a second line everywhere, then move it first, then drop the old.
    The file is re-read when its mtime, size or inode changes, checked at
    most every ``check_interval`` seconds.  An empty, missing or unreadable
    file raises ``ValueError`` (naming the path, never the content) at
    construction; a later bad version is logged and the old keys are kept,
    so a half-written file cannot take the service down.

    :param path: the secret file.
    :param check_interval: seconds between two looks at the file's metadata.
    """

    what = "secret file"

    @classmethod
    def from_secrets(cls, secrets: str | bytes | Iterable[str | bytes]) -> SecretKeys:
        """In-memory keys (``str`` secrets are UTF-8 encoded); for tests and programmatic use."""
        if isinstance(secrets, (bytes, str)):
            secrets = [secrets]
        raw: list[bytes] = []
        for secret in secrets:
            secret = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
            secret = secret.strip()
            if not secret:
                raise ValueError("an empty secret is not a secret")
            if secret not in raw:
                raw.append(secret)
        if not raw:
            raise ValueError("no secret given")
        self = cls.__new__(cls)
        self._in_memory(cls._make_state([(key_id_for(s), s) for s in raw]))
        return self

    @staticmethod
    def _make_state(pairs: KeyPairs) -> tuple[KeyPairs, dict[str, bytes]]:
        return pairs, dict(pairs)

    def _parse(self, data: bytes) -> tuple[KeyPairs, dict[str, bytes]]:
        pairs = _parse_secrets(data)
        if not pairs:
            raise ValueError("secret file %r holds no secret (only empty or # lines)" % self.path)
        if any(len(secret) < 16 for _, secret in pairs):
            log.warning("secret file %s holds a secret shorter than 16 bytes; use a long random "
                        "one (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')",
                        self.path)
        return self._make_state(pairs)

    def signing_key(self) -> tuple[str, bytes]:
        """``(key id, secret)`` of the key that signs: the first one."""
        if time.monotonic() >= self._next_check:  # (checked here: once per signed request)
            self._maybe_reload()
        return self._state[0][0]

    def get(self, key_id: str) -> bytes | None:
        """The secret with this key id, or ``None``."""
        self._maybe_reload()
        return self._state[1].get(key_id)

    @property
    def key_ids(self) -> list[str]:
        """The key ids, signing key first (they are public; the secrets are not)."""
        self._maybe_reload()
        return [key_id for key_id, _ in self._state[0]]

    def __repr__(self) -> str:  # never the secrets
        return "<SecretKeys %s: %s>" % (self.path or "in memory", ", ".join(self.key_ids))


# ---------------------------------------------------------------------------
# Ed25519 keys (RFC 9421 signatures; the cryptography package, imported when used)

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)


def _cryptography() -> Any:
    """The parts of ``cryptography`` that Ed25519 keys need, or a ``ValueError`` saying how
    to install it."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise ValueError("Ed25519 keys need the cryptography package: "
                         "pip install 'WSGIProxy[ed25519]'") from None
    return InvalidSignature, serialization, ed25519


def _raw_public(key: Any) -> bytes:
    _, serialization, _ = _cryptography()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _verify_function(key: Any) -> Callable[[bytes, bytes], bool]:
    invalid = _cryptography()[0]

    def verify(data: bytes, signature: bytes) -> bool:
        try:
            key.verify(signature, data)
        except invalid:
            return False
        return True
    return verify


class _PemFile(_KeyFile):
    """A PEM key file, which can also be made from bytes (:meth:`from_pem`)."""

    @classmethod
    def from_pem(cls, data: bytes) -> Any:
        """Keys from PEM bytes, in memory; for tests and programmatic use."""
        self = cls.__new__(cls)
        self.path = None
        self._in_memory(self._parse(data))
        return self


class PrivateKey(_PemFile):
    """An Ed25519 private key that signs (``WSGIProxyApp(private_key_file=...)``,
    the middleware's ``response_key_file``).

    The file is PEM, PKCS#8 (``-----BEGIN PRIVATE KEY-----``), not encrypted,
    as ``openssl genpkey -algorithm ed25519`` writes it.  Its key id is
    :func:`ed25519_key_id` of its public key.  Re-read when it changes, as
    :class:`SecretKeys` is; a file that is missing, unreadable or holds no
    Ed25519 private key raises ``ValueError`` at construction.

    :param path: the PEM file.
    :param check_interval: seconds between two looks at the file's metadata.
    """

    what = "private key file"

    def _parse(self, data: bytes) -> Any:
        _, serialization, ed25519 = _cryptography()
        name = self.path or "the PEM data"
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise ValueError("%s: encrypted private keys are not supported" % name) from None
        except ValueError:
            raise ValueError("%s holds no PEM private key" % name) from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError("%s: the private key is not an Ed25519 key" % name)  # noqa: TRY004
        key_id = ed25519_key_id(_raw_public(key.public_key()))
        return ("ed25519", key_id, key.sign), _verify_function(key.public_key())

    def _count(self) -> int:
        return 1

    def signer(self) -> tuple[str, str, Callable[[bytes], bytes]]:
        """``("ed25519", key id, sign)``: ``sign(data)`` returns 64 bytes."""
        if time.monotonic() >= self._next_check:  # (checked here: once per signed request)
            self._maybe_reload()
        return self._state[0]

    def verifier(self, key_id: str) -> tuple[str, Callable[[bytes, bytes], bool]] | None:
        """``("ed25519", verify)`` when ``key_id`` is this key's, else None."""
        self._maybe_reload()
        signer, verify = self._state
        return ("ed25519", verify) if key_id == signer[1] else None

    @property
    def key_id(self) -> str:
        """The key id (public)."""
        return self.signer()[1]

    def __repr__(self) -> str:
        return "<PrivateKey %s: %s>" % (self.path or "in memory", self.key_id)


class PublicKeys(_PemFile):
    """Ed25519 public keys that verify (the middleware's ``public_key_file``,
    ``WSGIProxyApp(response_public_key_file=...)``).

    The file holds one or more PEM ``-----BEGIN PUBLIC KEY-----`` blocks
    (SubjectPublicKeyInfo, as ``openssl pkey -pubout`` writes them); text
    between blocks is ignored, so comments are allowed.  Any of them
    verifies, under its :func:`ed25519_key_id`; several allow rotation.  A
    file without one, or with a key that is not Ed25519, raises
    ``ValueError`` at construction (later: logged, the keys before kept).

    :param path: the PEM file.
    :param check_interval: seconds between two looks at the file's metadata.
    """

    what = "public key file"
    private = False

    def _parse(self, data: bytes) -> Any:
        _, serialization, ed25519 = _cryptography()
        name = self.path or "the PEM data"
        keys: dict[str, Callable[[bytes, bytes], bool]] = {}
        for n, match in enumerate(_PEM_BLOCK.finditer(data), 1):
            if match.group(1) != b"PUBLIC KEY":
                raise ValueError("%s: block %d is a %s, not a PUBLIC KEY"
                                 % (name, n, match.group(1).decode("ascii")))
            try:
                key = serialization.load_pem_public_key(match.group())
            except ValueError:
                raise ValueError("%s: block %d is not a valid public key" % (name, n)) from None
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise ValueError("%s: key %d is not an Ed25519 key" % (name, n))  # noqa: TRY004
            keys[ed25519_key_id(_raw_public(key))] = _verify_function(key)
        if not keys:
            raise ValueError("%s holds no PEM public key" % name)
        return list(keys), keys

    def verifier(self, key_id: str) -> tuple[str, Callable[[bytes, bytes], bool]] | None:
        """``("ed25519", verify)`` of the key with this id, or None."""
        self._maybe_reload()
        verify = self._state[1].get(key_id)
        return None if verify is None else ("ed25519", verify)

    @property
    def key_ids(self) -> list[str]:
        """The key ids, in the order of the file."""
        self._maybe_reload()
        return list(self._state[0])

    def __repr__(self) -> str:
        return "<PublicKeys %s: %s>" % (self.path or "in memory", ", ".join(self.key_ids))


# ---------------------------------------------------------------------------
# Nonce stores

class NonceStore:
    """Remembers the nonces of accepted signatures, so a captured request cannot be replayed.

    An interface: implement :meth:`check_and_add` atomically over a shared
    store (Redis ``SET key 1 NX EXAT expires_at``, say) when several
    processes verify requests signed with the same secret.
    """

    def check_and_add(self, key_id: str, nonce: str, expires_at: float) -> bool:
        """Record ``nonce`` until ``expires_at`` (unix seconds); False if it was already there."""
        raise NotImplementedError


def _store_key(key_id: str, nonce: str) -> bytes:
    """The key a nonce is remembered under: always bytes, so that heap entries with the
    same expiry compare, and 24 bytes for a real signature's ids (hex: ~200 bytes an
    entry in all, not a tuple of two strings).  Any other pair of strings gets a key
    that is never 24 bytes long, so the two kinds cannot meet."""
    if len(key_id) == 16 and len(nonce) == 32:
        try:
            return bytes.fromhex(key_id + nonce)
        except ValueError:
            pass
    key = ("%s\0%s" % (key_id, nonce)).encode("utf-8", "surrogatepass")
    return key + b"\0" if len(key) == 24 else key


class MemoryNonceStore(NonceStore):
    """A thread-safe, in-process :class:`NonceStore` with expiry and a size cap.

    Expired entries are dropped as time passes.  Size it for the signature
    window times the peak rate of signed requests per process.  When
    ``max_entries`` live entries are held it raises :class:`NonceStoreFull`
    (the middleware answers 503 and logs the reason) rather than forgetting
    live ones, which would re-open replays.  Only one process is protected;
    with several workers each remembers its own nonces (use a shared store).

    :param max_entries: the most live nonces held.
    :param clock: the current time in unix seconds.
    """

    def __init__(self, max_entries: int = DEFAULT_NONCE_CAPACITY,
                 clock: Callable[[], float] = time.time) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[bytes, float] = {}
        self._heap: list[tuple[float, bytes]] = []
        self._full_warned = False

    def _expire(self, now: float) -> None:
        heap, entries = self._heap, self._entries
        while heap and heap[0][0] < now:
            expires_at, key = heapq.heappop(heap)
            if entries.get(key) == expires_at:
                del entries[key]

    def check_and_add(self, key_id: str, nonce: str, expires_at: float) -> bool:
        """Record ``nonce`` until ``expires_at`` (unix seconds); False if it was already there.

        Raises :class:`NonceStoreFull` when ``max_entries`` live nonces are held.
        """
        key = _store_key(key_id, nonce)
        with self._lock:
            now = self._clock()
            self._expire(now)
            if key in self._entries:
                return False
            if len(self._entries) >= self.max_entries:
                if not self._full_warned:
                    log.warning("nonce store is full (%d live entries): refusing signed requests "
                                "until entries expire; raise max_entries (nonce_cache_size) or "
                                "use a shared store", self.max_entries)
                    self._full_warned = True
                raise NonceStoreFull("the nonce store is full (%d live nonces)" % self.max_entries)
            self._full_warned = False
            self._entries[key] = expires_at
            heapq.heappush(self._heap, (expires_at, key))
            return True

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._entries)


# ---------------------------------------------------------------------------
# The nonce source

class _NonceSource:
    """Nonces that never repeat: a random 64-bit prefix per process, then a counter.

    A nonce only has to be unique (the signature, not the nonce, is the
    secret part); this costs no system call per request, unlike
    ``os.urandom``.  A forked child draws a new prefix, so parent and
    children never share a nonce.
    """

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        # One int: the prefix in the high 64 bits, the counter (from a random start, so
        # that it does not reach the prefix's bits) in the low ones.
        start = int.from_bytes(os.urandom(8), "big") << 64 | int.from_bytes(os.urandom(4), "big")
        #: The same as calling the source, in C alone (no Python frame): for the request
        #: path.  (``next()`` on ``itertools.count`` is atomic.)
        self.next = map("%032x".__mod__, itertools.count(start)).__next__

    def __call__(self) -> str:
        return self.next()


#: A new nonce (32 lowercase hex characters) each call, unique in this process and its forks.
new_nonce = _NonceSource()
#: A new request id (32 lowercase hex characters), made as the nonces are but from a
#: source of its own: a request id is shown in logs and responses, a nonce need not be.
new_request_id = _NonceSource()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=new_nonce.reseed)
    os.register_at_fork(after_in_child=new_request_id.reseed)
