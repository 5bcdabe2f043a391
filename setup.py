"""Packaging for WSGIProxy: the distribution name keeps ``egg:WSGIProxy#...`` working."""
import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "wsgiproxy", "__init__.py")) as f:
    VERSION = re.search(r'^__version__ = "([^"]+)"', f.read(), re.MULTILINE).group(1)
with open(os.path.join(HERE, "README.txt")) as f:
    LONG_DESCRIPTION = f.read()

TESTS_REQUIRE = [
    "pytest>=8",
    "pytest-timeout>=2.3",
    "gunicorn>=22",
    "trustme>=1.1",
    "hypothesis>=6.100",
    "Flask>=3",
    "Django>=5",
    "sphinx>=7",
    # docs/install.rst's wheel, built by tests/test_install.py.
    "build>=1",
    # Static checks run by ./dev test; pinned so a new release's rules land by choice.
    "ruff==0.17.6",
    "mypy>=1.10",
    "types-httplib2",
    "types-WebOb",
    "redis>=5",
    # Peers run by tests/test_docs_migration.py (docs/migration/).  WSGIProxy2 and
    # django-proxy-server get venvs of their own in .venv-peers/ (they install
    # top-level packages named wsgiproxy and tests).
    "Paste>=3.10",
    "django-revproxy>=0.13",
    "flask-reverse-proxy-fix>=0.2.1",
    # Long-lived connections (tests/test_websocket*.py, tests/test_cooperative.py):
    # cooperative workers, a real WebSocket backend and client, Flask-Sock.
    "gevent>=24",
    "eventlet>=0.36",
    "websockets>=13",
    "flask-sock>=0.7",
    "simple-websocket>=1.0",
    # RFC 9421: Ed25519 keys (the ed25519 extra), and an independent implementation
    # to sign and verify against (tests/test_rfc9421_interop.py).
    "http-message-signatures>=3.0,<4",
    "cryptography>=42",
    # wsgiproxy serve --reload (tests/test_cli.py).
    "hupper>=1.10",
    # Metrics (tests/test_metrics.py).
    "prometheus-client>=0.17",
]

setup(
    name="WSGIProxy",
    version=VERSION,
    description="HTTP proxying tools for WSGI apps: streaming, pooled, signed",
    long_description=LONG_DESCRIPTION,
    long_description_content_type="text/plain",
    classifiers=[
        "Development Status :: 4 - Beta",
        "Environment :: Web Environment",
        "Framework :: Paste",
        "Programming Language :: Python :: 3",
        "Topic :: Internet :: WWW/HTTP :: WSGI :: Application",
        "Topic :: Internet :: WWW/HTTP :: WSGI :: Middleware",
    ],
    keywords="wsgi paste http proxy",
    # An SPDX expression (PEP 639; setuptools >= 77, see pyproject.toml): the
    # "License ::" classifier it replaces is deprecated.
    license_expression="MIT",
    python_requires=">=3.10",
    packages=find_packages(exclude=["tests", "tests.*", "bench", "bench.*"]),
    include_package_data=True,
    package_data={"wsgiproxy": ["py.typed"]},
    zip_safe=False,
    install_requires=[
        "WebOb>=1.8",
        "httplib2>=0.22",
        "PasteDeploy>=3",
        "waitress>=3",
    ],
    extras_require={
        "test": TESTS_REQUIRE,
        "redis": ["redis>=5"],
        # Ed25519 keys for RFC 9421 signatures (private_key_file, public_key_file...).
        "ed25519": ["cryptography>=42"],
        # wsgiproxy serve --reload (the library pserve --reload uses).
        "reload": ["hupper>=1.10"],
        # Prometheus metrics (metrics = true, egg:WSGIProxy#metrics).
        "metrics": ["prometheus-client>=0.17"],
    },
    entry_points={
        "paste.app_factory": [
            "main = wsgiproxy.wsgiapp:make_app",
            "real_proxy = wsgiproxy.wsgiapp:make_real_proxy",
            "sample = wsgiproxy.wsgiapp:make_sample_app",
            "spawn = wsgiproxy.wsgiapp:make_spawn",
            "metrics = wsgiproxy.wsgiapp:make_metrics_app",
        ],
        "paste.filter_app_factory": [
            "main = wsgiproxy.wsgiapp:make_middleware",
            "demo_user = wsgiproxy.sampleapp:make_demo_user_filter",
        ],
        "console_scripts": [
            "wsgiproxy = wsgiproxy.command:main",
        ],
    },
)
