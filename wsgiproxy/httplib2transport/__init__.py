"""A buffering transport built on :class:`httplib2.Http`: backend caching, credentials, upstream proxies.

Choose it with ``transport = httplib2`` (``.ini``) or
``ExactProxy(transport="httplib2", ...)``.  It buffers each body whole, so it
is for backends whose answers are worth caching or that need what httplib2
does well (a response cache directory, basic/digest credentials); the
default :class:`~wsgiproxy.transport.HTTPTransport` streams and is faster.

What httplib2 does and what this module keeps from it:

* **used**: httplib2's ``FileCache`` directory format and its storing of the
  responses it receives, and basic/digest authentication;
* **replaced**: the cache decisions (freshness, ``Age``, ``Vary``, request
  directives, 304 updates: RFC 9111 for a shared cache, in ``freshness``),
  the connection, TLS and proxy code (so connect and read
  timeouts differ, the upstream proxy needs no PySocks, the request goes on
  the wire exactly as the client sent it), response parsing (the same strict
  rules as the default transport, repeated headers such as ``Set-Cookie``
  kept separate), and decompression (never done: bodies and their
  ``Content-Encoding``/``Content-Length`` pass through as the backend sent
  them);
* **turned off**: redirect following, ``If-Match`` on ``PUT``, the
  ``http_proxy`` environment variables (unless ``proxy_from_env``), and the
  authentication schemes that are neither basic nor digest (httplib2's
  ``GoogleLogin`` would send the credentials to a third party).

Because a reverse proxy serves many users, the cache follows shared-cache
rules (httplib2 alone behaves as a private, single-user cache); see
:class:`Httplib2Transport`.

The package, by concern: ``transport`` (the class: options, pool, one
exchange, error mapping), ``client`` (one ``httplib2.Http`` per request in
flight), ``connections`` (the connections and responses plugged into
httplib2), ``cache`` (the shared-cache rules and storage), ``freshness``
(RFC 9111 arithmetic and parsing, pure functions) and ``upstream``
(the upstream proxy and its tunnel).  Its options are typed; the deployment
layer (:mod:`wsgiproxy.wsgiapp`) converts ``.ini`` strings, with
:func:`parse_size` and :func:`parse_credentials`.
"""

from ..converters import parse_credentials, parse_size
from ..errors import RequestTooLarge, ResponseTooLarge
from .transport import DEFAULT_MAX_BODY, Httplib2Transport  # noqa: F401 (importable here, as before)

__all__ = ["Httplib2Transport", "RequestTooLarge", "ResponseTooLarge", "parse_credentials",
           "parse_size"]
