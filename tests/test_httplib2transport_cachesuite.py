"""The independent HTTP caching test suite (npm ``http-cache-tests``) against the httplib2 cache.

The suite's origin server (Node) and its client run on loopback, with a
``WSGIProxyApp`` on the httplib2 transport (a cache directory) between them.
Each safety-relevant test id is asserted on its own; the totals are only
printed.  The package is installed once with npm into
``$WSGIPROXY_CACHE_TESTS`` (default ``.venv/cache-tests``) and reused.
"""

import json
import os
import subprocess
import sys
import time

import pytest

from wsgiproxy.app import WSGIProxyApp

from .servers import Process, WaitressServer, free_port, need, wait_for_port

pytestmark = pytest.mark.slow

VERSION = "0.4.5"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL = os.environ.get("WSGIPROXY_CACHE_TESTS") or os.path.join(ROOT, ".venv", "cache-tests")
PACKAGE = os.path.join(INSTALL, "node_modules", "http-cache-tests")

#: Must pass: a shared cache that fails one serves what it must not.
MUST_PASS = [
    # private, no-store, credentials, cookies
    "cc-resp-private-shared", "cc-resp-no-store", "cc-resp-no-store-case-insensitive",
    "cc-resp-no-store-fresh", "cc-resp-no-cache", "cc-resp-no-cache-case-insensitive",
    "cc-resp-must-revalidate-stale", "other-authorization", "surrogate-no-store",
    # Vary
    "vary-2-match-omit", "vary-2-no-match", "vary-3-no-match", "vary-3-order", "vary-no-match",
    "vary-omit", "vary-omit-stored", "vary-star", "vary-syntax-empty-star",
    "vary-syntax-empty-star-lines", "vary-syntax-foo-star", "vary-syntax-star",
    "vary-syntax-star-foo", "vary-syntax-star-star", "vary-syntax-star-star-lines",
    # invalidation by unsafe methods
    "invalidate-DELETE", "invalidate-M-SEARCH", "invalidate-POST", "invalidate-PUT",
    # Age, in and out
    "freshness-max-age-age", "freshness-expires-age-fast-date",
    "freshness-expires-age-slow-date", "other-age-gen", "other-age-update-expires",
    "other-age-update-max-age", "age-parse-dup-0", "age-parse-dup-0-twoline",
    "age-parse-dup-old", "age-parse-float", "age-parse-negative", "age-parse-nonnumeric",
    "age-parse-numeric-parameter", "age-parse-parameter", "age-parse-prefix-twoline",
    "age-parse-suffix", "age-parse-suffix-twoline",
    # freshness arithmetic that must not make stale responses fresh
    "freshness-max-age-0", "freshness-max-age-0-expires", "freshness-max-age-negative",
    "freshness-max-age-ignore-quoted", "freshness-max-age-ignore-quoted-rev",
    "freshness-max-age-single-quoted", "freshness-s-maxage-shared",
    "freshness-max-age-s-maxage-shared-longer", "freshness-max-age-s-maxage-shared-longer-multiple",
    "freshness-max-age-s-maxage-shared-longer-reversed",
    "freshness-expires-past", "freshness-expires-invalid", "freshness-expires-present",
]

#: "check" tests that pass when the response is served from the cache: with
#: these invalid dates or conflicting lifetimes it must not be (RFC 9111:
#: an invalid Expires means already expired).
MUST_NOT_BE_CACHED = [
    "freshness-expires-invalid-1-digit-hour", "freshness-expires-invalid-2-digit-year",
    "freshness-expires-invalid-aest", "freshness-expires-invalid-date-dashes",
    "freshness-expires-invalid-multiple-lines", "freshness-expires-invalid-multiple-spaces",
    "freshness-expires-invalid-no-comma", "freshness-expires-invalid-time-periods",
    "freshness-expires-invalid-utc", "freshness-max-age-two-stale-fresh-sameline",
    "freshness-max-age-two-stale-fresh-sepline",
]


def installed():
    """The suite's package directory, installed with npm the first time."""
    stamp = os.path.join(INSTALL, ".installed-" + VERSION)
    if not os.path.exists(stamp):
        npm = need("npm")
        os.makedirs(INSTALL, exist_ok=True)
        done = subprocess.run(
            [npm, "install", "--prefix", INSTALL, "--no-audit", "--no-fund", "--omit=dev",
             "http-cache-tests@" + VERSION], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, "npm install http-cache-tests failed:\n" + done.stderr
        open(stamp, "w").close()
    return PACKAGE


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    node = need("node")
    package = installed()
    tmp = tmp_path_factory.mktemp("cachesuite")
    port = free_port()
    env = dict(os.environ, npm_config_port=str(port), npm_config_protocol="http",
               npm_config_pidfile=str(tmp / "origin.pid"))
    with Process([node, "server/server.mjs"], cwd=package, env=env) as origin:
        wait_for_port(port, process=origin.proc)
        proxy = WSGIProxyApp("http://127.0.0.1:%d" % port, transport="httplib2",
                             cache_dir=str(tmp / "cache"), read_timeout=30)
        # The client runs up to 100 tests at once, each on its own connection.
        with WaitressServer(proxy, threads=32, connection_limit=1000) as server:
            started = time.monotonic()
            env = dict(os.environ, npm_config_base=server.url, npm_config_id="",
                       npm_package_config_id="")
            run = subprocess.run([node, "--no-warnings", "cli.mjs"], cwd=package, env=env,
                                 capture_output=True, text=True, timeout=300)
        proxy.transport.close()
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    passed = sum(1 for value in found.values() if value is True)
    sys.stderr.write("http-cache-tests %s: %d of %d true in %.0fs\n"
                     % (VERSION, passed, len(found), time.monotonic() - started))
    return found


@pytest.mark.parametrize("test_id", MUST_PASS)
def test_safety_relevant_cache_test_passes(results, test_id):
    assert results.get(test_id) is True, results.get(test_id, "not run")


@pytest.mark.parametrize("test_id", MUST_NOT_BE_CACHED)
def test_invalid_dates_and_conflicting_lifetimes_are_not_served_from_cache(results, test_id):
    assert test_id in results
    assert results[test_id] is not True
