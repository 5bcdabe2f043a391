"""The httplib2 transport's cache decides as a shared cache (RFC 9111), against a real backend.

Each test scripts the backend's response headers for its own path, then
counts how often the backend was asked: a request served from the cache
never reaches it.
"""

import logging
import os
import threading
import time
from email.utils import formatdate

import pytest

from wsgiproxy.exactproxy import ExactProxy
from wsgiproxy.httplib2transport.freshness import age_value, parse_http_date, usable

from .client import through
from .servers import WaitressServer

SCRIPT = {}  # path -> the response headers the backend sends
HITS = {}  # path -> the environs it received
LOCK = threading.Lock()


def scripted_app(environ, start_response):
    path = environ["PATH_INFO"]
    with LOCK:
        HITS.setdefault(path, []).append(environ)
        n = len(HITS[path])
    headers = [(name, value() if callable(value) else value)
               for name, value in SCRIPT.get(path, [("Cache-Control", "max-age=600")])]
    etag = dict(headers).get("ETag")
    if etag is not None and environ.get("HTTP_IF_NONE_MATCH") == etag:
        start_response("304 Not Modified", [h for h in headers if h[0] != "ETag"]
                       + [("ETag", etag), ("X-Revalidated", str(n))])
        return []
    body = ("%s n=%d lang=%s" % (path, n, environ.get("HTTP_ACCEPT_LANGUAGE"))).encode()
    start_response("200 OK", [*headers, ("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


def now_date():
    return formatdate(usegmt=True)


def ago(seconds):
    return formatdate(time.time() - seconds, usegmt=True)


@pytest.fixture(scope="module")
def backend():
    with WaitressServer(scripted_app) as server:
        yield server


@pytest.fixture
def proxy(tmp_path):
    p = ExactProxy(transport="httplib2", cache_dir=str(tmp_path / "cache"), read_timeout=5)
    yield p
    p.close()


def script(path, *headers):
    SCRIPT[path] = list(headers)
    HITS.pop(path, None)
    return path


def hits(path):
    return len(HITS.get(path, ()))


def get(proxy, backend, path, **headers):
    return through(proxy, backend.port, path, headers=headers)


# -- Vary is a list with optional whitespace, tabs included ------------------------

@pytest.mark.parametrize("vary", ["Foo,\tAccept-Language", "Foo ,\t Accept-Language\t",
                                  "accept-language"])
def test_vary_with_tabs_never_serves_one_language_to_another(proxy, backend, vary):
    path = script("/vary-%d" % len(vary), ("Date", now_date), ("Cache-Control", "max-age=600"),
                  ("Vary", vary))
    assert get(proxy, backend, path, **{"Accept-Language": "en"}).body.endswith(b"lang=en")
    assert get(proxy, backend, path, **{"Accept-Language": "en"}).body.endswith(b"lang=en")
    assert hits(path) == 1
    french = get(proxy, backend, path, **{"Accept-Language": "fr"})
    assert french.body.endswith(b"lang=fr") and hits(path) == 2
    assert get(proxy, backend, path).body.endswith(b"lang=None") and hits(path) == 3


# -- a client may shorten freshness, never extend it --------------------------------

@pytest.mark.parametrize("directives", ["max-age=3600", "min-fresh=0", "max-age=3600, min-fresh=1"])
def test_request_directives_cannot_make_a_stale_response_fresh(proxy, backend, directives):
    path = script("/extend-" + directives.replace(" ", ""), ("Date", lambda: ago(10)),
                  ("Cache-Control", "max-age=1"))
    get(proxy, backend, path)
    get(proxy, backend, path, **{"Cache-Control": directives})
    assert hits(path) == 2


def test_request_max_age_and_min_fresh_shorten_freshness(proxy, backend):
    path = script("/shorten", ("Date", lambda: ago(30)), ("Cache-Control", "max-age=600"))
    get(proxy, backend, path)
    assert get(proxy, backend, path).body.startswith(path.encode() + b" n=1 ")  # fresh: 30s of 600
    get(proxy, backend, path, **{"Cache-Control": "max-age=10"})  # older than 10s
    assert hits(path) == 2
    path = script("/min-fresh", ("Date", now_date), ("Cache-Control", "max-age=600"))
    get(proxy, backend, path)
    get(proxy, backend, path, **{"Cache-Control": "min-fresh=900"})
    assert hits(path) == 2


def test_max_stale_allows_a_stale_response_unless_it_must_revalidate(proxy, backend):
    path = script("/max-stale", ("Date", lambda: ago(100)), ("Cache-Control", "max-age=1"))
    get(proxy, backend, path)
    res = get(proxy, backend, path, **{"Cache-Control": "max-stale=3600"})
    assert res.body.startswith(path.encode() + b" n=1 ") and hits(path) == 1
    get(proxy, backend, path, **{"Cache-Control": "max-stale=5"})  # 99s stale > 5
    assert hits(path) == 2
    for cc in ("max-age=1, must-revalidate", "max-age=1, proxy-revalidate", "s-maxage=1"):
        path = script("/must-" + cc[-6:], ("Date", lambda: ago(100)), ("Cache-Control", cc))
        get(proxy, backend, path)
        get(proxy, backend, path, **{"Cache-Control": "max-stale"})
        assert hits(path) == 2, cc


def test_only_if_cached_gets_504_for_a_stale_must_revalidate_entry(proxy, backend):
    path = script("/oic-stale", ("Date", lambda: ago(100)),
                  ("Cache-Control", "max-age=1, must-revalidate"))
    get(proxy, backend, path)
    for cc in ("only-if-cached", "only-if-cached, max-age=3600", "only-if-cached, max-stale"):
        res = get(proxy, backend, path, **{"Cache-Control": cc})
        assert res.status_int == 504, cc
    assert hits(path) == 1
    fresh = script("/oic-fresh", ("Date", now_date), ("Cache-Control", "max-age=600"))
    get(proxy, backend, fresh)
    assert get(proxy, backend, fresh, **{"Cache-Control": "only-if-cached"}).status_int == 200
    assert hits(fresh) == 1


# -- Age: counted on the way in, kept and increased on the way out ------------------

def test_an_old_response_is_not_fresh_and_age_is_kept_and_increased(proxy, backend):
    old = script("/age-old", ("Date", now_date), ("Cache-Control", "max-age=3600"),
                 ("Age", "7200"))
    get(proxy, backend, old)
    get(proxy, backend, old)
    assert hits(old) == 2
    aged = script("/age-kept", ("Date", now_date), ("Cache-Control", "max-age=3600"),
                  ("Age", "100"))
    get(proxy, backend, aged)
    res = get(proxy, backend, aged)
    assert hits(aged) == 1 and 100 <= int(res.headers["Age"]) < 200
    dated = script("/age-date", ("Date", lambda: ago(50)), ("Cache-Control", "max-age=3600"))
    get(proxy, backend, dated)
    assert 50 <= int(get(proxy, backend, dated).headers["Age"]) < 150


@pytest.mark.parametrize("value", ["abc", "-7200", "7200.0", "0, 0", "7200;foo=bar", ""])
def test_an_invalid_age_makes_the_response_stale(proxy, backend, value):
    path = script("/age-bad-%r" % value, ("Date", now_date), ("Cache-Control", "max-age=3600"),
                  ("Age", value))
    get(proxy, backend, path)
    get(proxy, backend, path)
    assert hits(path) == 2


# -- invalid Expires or Date: stale, never a crash ---------------------------------

@pytest.mark.parametrize("expires", [
    "Thu, 01 Jan 2099 00:00:00 UTC", "Thu, 01 Jan 99 00:00:00 GMT",
    "Thu, 01-Jan-2099 00:00:00 GMT", "Thu, 01 Jan 2099 0:00:00 GMT",
    "Thu, 01 Jan 2099 00.00.00 GMT", "THU, 01 Jan 2099 00:00:00 GMT", "0", "",
    "Thu, 01 Jan 2099 00:00:00 GMT, Fri, 02 Jan 2099 00:00:00 GMT"])
def test_an_invalid_expires_means_already_expired(proxy, backend, expires):
    path = script("/expires-%d" % abs(hash(expires)), ("Date", now_date), ("Expires", expires))
    get(proxy, backend, path)
    get(proxy, backend, path)
    assert hits(path) == 2


def test_a_valid_expires_in_each_of_the_three_formats_is_fresh(proxy, backend):
    future = time.gmtime(time.time() + 3 * 86400)
    forms = [time.strftime("%a, %d %b %Y %H:%M:%S GMT", future),
             time.strftime("%A, %d-%b-%y %H:%M:%S GMT", future),
             time.strftime("%a %b %e %H:%M:%S %Y", future)]
    for i, expires in enumerate(forms):
        path = script("/expires-ok-%d" % i, ("Date", now_date), ("Expires", expires))
        get(proxy, backend, path)
        assert get(proxy, backend, path).body.startswith(path.encode() + b" n=1 "), expires
        assert hits(path) == 1


@pytest.mark.parametrize("date", ["foo", "Thu, 01 Jan 2099 00:00:00 UTC", "0"])
def test_a_stored_response_with_an_invalid_date_is_stale_not_a_500(proxy, backend, date):
    path = script("/date-%d" % abs(hash(date)), ("Date", date), ("Cache-Control", "max-age=600"),
                  ("ETag", '"d1"'))
    for n in range(3):
        res = get(proxy, backend, path)
        assert res.status_int == 200, res.body
    assert hits(path) == 3
    assert HITS[path][1]["HTTP_IF_NONE_MATCH"] == '"d1"'  # revalidated, not refetched


def test_date_parsing_is_strict_and_accepts_the_three_formats():
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT") == 784111777
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT") == 784111777
    assert parse_http_date("Sun Nov  6 08:49:37 1994") == 784111777
    for bad in ("Sun, 06 Nov 1994 08:49:37 UTC", "Sun, 31 Feb 1994 08:49:37 GMT",
                "Sun, 06 Nov 1994 24:49:37 GMT", "sun, 06 Nov 1994 08:49:37 GMT", None, "foo"):
        assert parse_http_date(bad) is None, bad
    assert age_value(None) == 0 and age_value("12") == 12 and age_value("1 2") is None
    assert usable({"date": "foo", "cache-control": "max-age=60"}, {}, 0.0, 0.0, 1.0) is None


# -- errors inside the cache layer: logged, the backend answers ---------------------

def test_a_corrupt_entry_is_dropped_and_the_backend_answers(proxy, backend, tmp_path, caplog):
    path = script("/corrupt", ("Date", now_date), ("Cache-Control", "max-age=600"))
    get(proxy, backend, path)
    cache_dir = tmp_path / "cache"
    (entry,) = [cache_dir / name for name in os.listdir(cache_dir) if "corrupt" in name]
    for garbage in (b"status: 200\r\nwsgiproxy(entry): {not json\r\n\r\nbody",
                    b"status: 200\r\nDate: foo\r\nCache-Control: max-age=600\r\n\r\nold"):
        entry.write_bytes(garbage)
        with caplog.at_level(logging.DEBUG, logger="wsgiproxy.httplib2transport"):
            res = get(proxy, backend, path)
        assert res.status_int == 200 and res.body.startswith(b"/corrupt n=")
    assert hits(path) == 3
    assert "dropping the cache entry" in caplog.text
    assert get(proxy, backend, path).body == res.body  # the new entry serves again


def test_a_failing_store_falls_back_to_the_backend(proxy, backend, caplog):
    path = script("/failing", ("Date", now_date), ("Cache-Control", "max-age=600"))
    get(proxy, backend, path)
    store = proxy.transport._cache.store

    def broken(*args):
        raise RuntimeError("disk on fire")
    store.get = store.set = broken
    with caplog.at_level(logging.WARNING, logger="wsgiproxy.httplib2transport"):
        assert get(proxy, backend, path).status_int == 200
        assert get(proxy, backend, path).status_int == 200
    assert hits(path) == 3 and "disk on fire" in caplog.text


# -- 304: the stored response is updated ------------------------------------------

def test_a_304_updates_the_stored_headers_and_age_restarts(proxy, backend):
    path = script("/update", ("Date", lambda: ago(100)), ("Cache-Control", "max-age=1"),
                  ("ETag", '"u1"'), ("X-Version", "1"), ("Age", "50"))
    first = get(proxy, backend, path)
    SCRIPT[path] = [("Date", now_date), ("Cache-Control", "max-age=600"), ("ETag", '"u1"'),
                    ("X-Version", "2")]
    second = get(proxy, backend, path)
    assert second.body == first.body and second.headers["X-Version"] == "2"
    assert second.headers["Cache-Control"] == "max-age=600"
    third = get(proxy, backend, path)
    assert third.body == first.body and hits(path) == 2
    assert third.headers["X-Version"] == "2" and int(third.headers["Age"]) < 50


# -- CDN-Cache-Control (RFC 9213): private, no-store, no-cache honoured -------------

def test_cdn_cache_control_private_no_store_and_no_cache_are_honoured(proxy, backend):
    for value in ("private", "no-store", "max-age=60, private"):
        path = script("/cdn-" + value.replace(" ", ""), ("Date", now_date),
                      ("Cache-Control", "max-age=600"), ("CDN-Cache-Control", value))
        get(proxy, backend, path)
        get(proxy, backend, path)
        assert hits(path) == 2, value
    path = script("/cdn-no-cache", ("Date", now_date), ("Cache-Control", "max-age=600"),
                  ("CDN-Cache-Control", "no-cache"), ("ETag", '"c1"'))
    get(proxy, backend, path)
    assert get(proxy, backend, path).body.startswith(path.encode() + b" n=1 ")
    assert hits(path) == 2 and HITS[path][1]["HTTP_IF_NONE_MATCH"] == '"c1"'
