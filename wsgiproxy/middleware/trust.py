"""Who is believed for what: the trust table of :class:`~wsgiproxy.middleware.WSGIProxyMiddleware`.

A request comes from one of five kinds of sender (:class:`Peer`).
:data:`BELIEVED` says, for each kind, which forwarded headers are applied;
:class:`Trust` decides which kind a request is, from its signature and its
``REMOTE_ADDR``.  The rest of the middleware only reads the row it is given.

The headers come in two families:

*front-proxy headers*
    ``X-Forwarded-For``, ``-Proto``, ``-Host``, ``-Port``, ``-Prefix`` (as
    the ``x_*`` counts select) or RFC 7239 ``Forwarded`` (``forwarded``):
    what nginx, HAProxy and load balancers write about their own client.
*WSGIProxy identity headers*
    ``X-WSGIProxy-Version``, ``X-Forwarded-Server``, ``-Scheme``,
    ``-Script-Name``, ``X-Script-Name``, ``X-Traversal-Path`` and the key
    headers (``X-WSGIProxy-Str-N``, ``-Unicode-N``, ``-Json-N``,
    ``-Pickle-N``): what ``WSGIProxyApp`` writes.  A plain reverse proxy
    passes these on from its client unchanged.

A request with a bad signature is refused (403) whoever sent it, before any
row is read.  The same table, in prose, is in ``docs/middleware.rst`` ("Trust
model") and ``docs/security.rst`` ("What is trusted, and when").
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

from ..protocol import LOOPBACK, TrustedNetworks

__all__ = ["BELIEVED", "Belief", "Peer", "Pickles", "Trust"]

log = logging.getLogger("wsgiproxy.middleware")

#: An address option: a string (items separated by commas or whitespace), a list, or None.
Addresses = str | Sequence[str] | TrustedNetworks | None


class Peer(enum.Enum):
    """The kind of sender a request comes from, as far as the middleware can tell."""

    #: Any peer, with a valid ``X-WSGIProxy-Signature``.
    SIGNED = "signed"
    #: Unsigned, from a ``trust_ips`` address: a ``WSGIProxyApp`` host.
    TRUST_IPS = "trust_ips"
    #: Unsigned, from loopback, with none of ``secret_file``, ``trust_ips``,
    #: ``front_proxy_ips`` configured: trusted as if listed in ``trust_ips``.
    LOOPBACK = "loopback default"
    #: Unsigned, from a ``front_proxy_ips`` address (and not ``trust_ips``):
    #: nginx, HAProxy, a load balancer.
    FRONT_PROXY = "front_proxy_ips"
    #: Unsigned, from anyone else.
    OTHER = "other"


class Pickles(enum.Enum):
    """What becomes of an ``X-WSGIProxy-Pickle-*`` header."""

    #: Unpickled into the environ.
    UNPICKLED = "unpickled"
    #: Unpickled only with ``allow_pickle_from_trusted_ips``, else as REFUSED.
    OPT_IN = "opt-in"
    #: The request is answered 403 before the value is even parsed.
    REFUSED = "refused"


class Belief(NamedTuple):
    """One row of the table: what one kind of sender is believed for."""

    #: The WSGIProxy identity headers other than the key headers.
    identity: bool
    #: The key headers ``X-WSGIProxy-Str-N``, ``-Unicode-N``, ``-Json-N``.
    keys: bool
    #: The key headers ``X-WSGIProxy-Pickle-N``.
    pickles: Pickles
    #: The front-proxy headers (``x_for``, ``x_proto``, ``x_host``, ``x_port``,
    #: ``x_prefix``, or ``forwarded``).
    front: bool
    #: Refused (403 ``missing``) while ``require_signature`` is on.
    needs_signature: bool


#: Who is believed for what.  A header that is not believed is not parsed
#: either (a malformed one is no 400); ``X-WSGIProxy-*`` are removed from the
#: environ whatever the row.
BELIEVED: dict[Peer, Belief] = {
    #                          identity keys   pickles            front  needs_signature
    Peer.SIGNED:        Belief(True,    True,  Pickles.UNPICKLED, True,  False),
    Peer.TRUST_IPS:     Belief(True,    True,  Pickles.OPT_IN,    True,  False),
    Peer.LOOPBACK:      Belief(True,    True,  Pickles.REFUSED,   True,  False),
    Peer.FRONT_PROXY:   Belief(False,   False, Pickles.REFUSED,   True,  True),
    Peer.OTHER:         Belief(False,   False, Pickles.REFUSED,   False, True),
}


def networks(spec: Addresses, option: str) -> TrustedNetworks:
    """The :class:`~wsgiproxy.protocol.TrustedNetworks` of an address option.

    :param option: the option's name, put before the message of a ``ValueError``.
    """
    if not spec:
        return TrustedNetworks()
    try:
        return TrustedNetworks(spec)
    except ValueError as exc:
        raise ValueError("%s: %s" % (option, exc)) from None


class Trust:
    """Decides which row of :data:`BELIEVED` a request gets, for one configuration.

    :param trust_ips: ``WSGIProxyApp`` hosts, believed as if their requests were signed.
    :param front_proxy_ips: front proxies, believed for the front-proxy headers only.
    :param secret: whether a ``secret_file`` is configured (no loopback default then).
    :param require_signature: refuse unsigned requests of peers whose row needs a
        signature; None means "when there is a secret".
    :param allow_pickle_from_trusted_ips: resolve ``Pickles.OPT_IN`` to UNPICKLED.

    Raises ``ValueError`` for a combination that cannot work; logs a warning
    for ``*`` and for the loopback default.  :attr:`table` is :data:`BELIEVED`
    resolved for this configuration (no OPT_IN, ``needs_signature`` only when
    signatures are required).
    """

    def __init__(self, trust_ips: Addresses = None, front_proxy_ips: Addresses = None, *,
                 secret: bool = False, require_signature: bool | None = None,
                 allow_pickle_from_trusted_ips: bool = False) -> None:
        self.trust_ips_configured = bool(trust_ips)
        self.trusted = networks(trust_ips, "trust_ips")
        if self.trusted.everything:
            log.warning("trust_ips = * : every peer may set forwarded headers (host, scheme, "
                        "client address, keys); only safe if nothing but the proxy can connect")
        self.front_proxies = networks(front_proxy_ips, "front_proxy_ips")
        if self.front_proxies.everything:
            log.warning("front_proxy_ips = * : every peer may set X-Forwarded-* and Forwarded "
                        "(client address, scheme, host); only safe if nothing but the front "
                        "proxy can connect")
        self.loopback_default = not secret and not self.trusted and not self.front_proxies
        if self.loopback_default:
            self.trusted = LOOPBACK
            log.warning("neither secret_file nor trust_ips nor front_proxy_ips is configured: "
                        "trusting forwarded headers from loopback peers (127.0.0.0/8, ::1) only")
        if require_signature is None:
            require_signature = secret
        if require_signature and not secret:
            raise ValueError("require_signature needs a secret_file (or public_key_file)")
        self.require_signature = bool(require_signature)
        if self.require_signature and self.front_proxies:
            raise ValueError("front_proxy_ips has no effect while require_signature is on: "
                             "unsigned requests from those proxies would be refused. Set "
                             "require_signature = false to serve them with their X-Forwarded-* "
                             "headers applied")
        if allow_pickle_from_trusted_ips and not self.trust_ips_configured:
            raise ValueError("allow_pickle_from_trusted_ips needs trust_ips")
        if allow_pickle_from_trusted_ips:
            log.warning("allow_pickle_from_trusted_ips is on: any process that can connect from "
                        "%r can run code in this one", self.trusted)
        self.allow_pickle_from_trusted_ips = bool(allow_pickle_from_trusted_ips)
        self.table = {peer: self._resolve(row) for peer, row in BELIEVED.items()}

    def _resolve(self, row: Belief) -> Belief:
        pickles = row.pickles
        if pickles is Pickles.OPT_IN:
            pickles = Pickles.UNPICKLED if self.allow_pickle_from_trusted_ips else Pickles.REFUSED
        return row._replace(pickles=pickles,
                            needs_signature=row.needs_signature and self.require_signature)

    def peer(self, remote_addr: Any, signed: bool) -> Peer:
        """The kind of sender of a request from ``remote_addr``, signed or not.

        A peer in both lists counts as ``trust_ips``.
        """
        if signed:
            return Peer.SIGNED
        if remote_addr in self.trusted:
            return Peer.LOOPBACK if self.loopback_default else Peer.TRUST_IPS
        if remote_addr in self.front_proxies:
            return Peer.FRONT_PROXY
        return Peer.OTHER

    def decide(self, remote_addr: Any, signed: bool) -> Belief:
        """The row of :attr:`table` for a request from ``remote_addr``, signed or not."""
        return self.table[self.peer(remote_addr, signed)]
