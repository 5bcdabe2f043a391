"""Suite-wide guards (a run that executed no test, or passed none, is a failure) and the
shared fixtures: echo, secret_file, h2proxy, ca, ca_file, tls_server, django_settings,
redis_server, piddir.  Their helpers are in tests/servers.py and tests/client.py."""

import ssl

import pytest
import trustme

from .servers import OK, RawServer, RedisServer, WaitressServer, echo_app, scripted, write_secret

_passed = 0


def pytest_runtest_logreport(report):
    global _passed
    if report.when == "call" and report.passed:
        _passed += 1


def pytest_sessionfinish(session, exitstatus):
    # exit 5 ("no tests ran") and an everything-skipped run must not look green.
    if exitstatus in (0, 5) and _passed == 0 and not session.config.option.collectonly:
        session.exitstatus = 1
        session.config.get_terminal_writer().line(
            "ERROR: no test passed (none ran, or all were skipped)", red=True)


@pytest.fixture(scope="module")
def echo():
    """A waitress server answering with its environ as JSON."""
    with WaitressServer(echo_app) as server:
        yield server


@pytest.fixture
def secret_file(tmp_path):
    """The path of a secret file (servers.TEST_SECRET) for a WSGIProxyApp and its backend."""
    return write_secret(tmp_path)


@pytest.fixture
def h2proxy():
    """An exact proxy with the httplib2 transport (short timeouts), closed after the test."""
    from wsgiproxy.exactproxy import ExactProxy
    proxy = ExactProxy(transport="httplib2", read_timeout=5, connect_timeout=5)
    yield proxy
    proxy.close()


@pytest.fixture(scope="session")
def ca():
    """A certificate authority made for the test run (trustme)."""
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(ca, tmp_path_factory):
    path = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def tls_server(ca):
    """A TLS raw server for 127.0.0.1/localhost answering OK twice."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    with RawServer(scripted(OK, OK), ssl_context=ctx) as server:
        yield server


@pytest.fixture(scope="module")
def django_settings(request):
    """Django configured for the test module (``ROOT_URLCONF`` is the module: its
    ``urlpatterns``), and unconfigured after it, so each module gets its own."""
    import django  # type: ignore[import-untyped]
    from django.conf import settings  # type: ignore[import-untyped]
    from django.utils.functional import empty  # type: ignore[import-untyped]
    configured_here = not settings.configured
    if configured_here:
        settings.configure(DEBUG=False, SECRET_KEY="wsgiproxy-tests", ALLOWED_HOSTS=["*"],
                           ROOT_URLCONF=request.module.__name__, MIDDLEWARE=[],
                           INSTALLED_APPS=[], USE_TZ=True)
        django.setup()
    yield settings
    if configured_here:
        settings._wrapped = empty


@pytest.fixture
def redis_server(tmp_path):
    """A redis-server of the test's own (tmp_path/redis), stopped after it."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory).start()
    yield server
    server.stop()


@pytest.fixture
def piddir(tmp_path):
    """The directory where tests/spawnchild.py writes each child's pid (``servers.pids_in``)."""
    path = tmp_path / "pids"
    path.mkdir()
    return str(path)


@pytest.fixture
def no_metrics():
    """Metrics off for one test, as in a process that never enabled them: a test (or
    a loaded ``.ini`` with ``metrics = true``) earlier in the run may have, for good."""
    from wsgiproxy import observe
    saved = list(observe.SINKS)
    observe.SINKS.clear()
    yield
    observe.SINKS[:] = saved
