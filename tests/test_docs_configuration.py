"""docs/configuration.rst against the code: every option is there, every default is right.

The page has one ``list-table`` per component: option (its ``.ini`` spelling,
which is also the constructor's argument unless the cell names another),
type, default, and what it does followed by ``**Security:**`` and its
security meaning.  The option tables of wsgiproxy/wsgiapp.py
(every ``*_OPTIONS`` dict) and the constructors' signatures are the truth;
nothing expected is written down here.
"""

import ast
import contextlib
import importlib
import inspect
import io
import os
import re

import pytest
from paste.deploy import loadapp  # type: ignore[import-untyped]
from paste.deploy.converters import asbool, asint  # type: ignore[import-untyped]

from wsgiproxy import command, wsgiapp
from wsgiproxy.app import WSGIProxyApp
from wsgiproxy.exactproxy import ExactProxy
from wsgiproxy.httplib2transport import Httplib2Transport
from wsgiproxy.middleware import WSGIProxyMiddleware
from wsgiproxy.protocol import MemoryNonceStore, SecretKeys
from wsgiproxy.redisstore import STORE_PARAMETERS, RedisNonceStore
from wsgiproxy.sampleapp import make_demo_user_filter
from wsgiproxy.spawn import SpawningApplication
from wsgiproxy.transport import HTTPTransport

from .docsnippets import DOCS, snippet

PAGE = os.path.join(DOCS, "configuration.rst")

# The first word of the type column, for the converters that have one meaning.
TYPE_WORDS = {asbool: "bool", asint: "int", float: "float", wsgiapp.aslist: "list",
              wsgiapp._optional_int: "int or none", wsgiapp.proxy_count: "int or bool"}


# -- reading the page ------------------------------------------------------------

def list_tables(text):
    """``{title: [row, ...]}`` of the page's list-tables; a row is a list of cell texts
    (continuation lines joined with spaces), the header row included."""
    tables = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = re.match(r"\.\. list-table:: (.+)$", lines[i])
        i += 1
        if not match:
            continue
        rows = []
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith("   ")):
            line = lines[i]
            i += 1
            if line.startswith("   * - "):
                rows.append([line[7:].strip()])
            elif line.startswith("     - "):
                rows[-1].append(line[7:].strip())
            elif line.startswith("       ") and rows:
                rows[-1][-1] += " " + line.strip()
        title = match.group(1).strip()
        assert title not in tables, "two tables are called %r" % title
        tables[title] = rows
    return tables


@pytest.fixture(scope="module")
def tables():
    with open(PAGE, encoding="utf-8") as f:
        return list_tables(f.read())


def literal(cell):
    """``name`` from a cell that is exactly ````name````."""
    match = re.fullmatch(r"``([^`]+)``", cell)
    assert match, "expected ``name``, got %r" % cell
    return match.group(1)


def option_names(cell):
    """``(.ini name, Python name)`` from an option cell; None where there is none.

    ````x````: both; ````x```` (Python: ````y````); Python only: ````y````;
    ````x```` (````.ini```` only).
    """
    match = re.fullmatch(r"Python only: (``[^`]+``)", cell)
    if match:
        return None, literal(match.group(1))
    match = re.fullmatch(r"(``[^`]+``) \(``\.ini`` only\)", cell)
    if match:
        return literal(match.group(1)), None
    match = re.fullmatch(r"(``[^`]+``) \(Python: (``[^`]+``)\)", cell)
    if match:
        return literal(match.group(1)), literal(match.group(2))
    name = literal(cell)
    return name, name


def documented_default(cell):
    """The default a cell states: ``inspect.Parameter.empty`` for "required", else the first
    ``literal`` of the cell as a Python value (a literal, or a dotted name imported)."""
    if cell == "required":
        return inspect.Parameter.empty
    match = re.match(r"``([^`]+)``", cell)
    assert match, "a default must be required or a ``literal``, got %r" % cell
    text = match.group(1)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        module, _, name = text.rpartition(".")
        return getattr(importlib.import_module(module), name)


def options(table_rows):
    """The rows of an option table as dicts: ini, python, type, default, does, security."""
    header, *rows = table_rows
    assert header == ["option", "type", "default", "what it does"]
    out = []
    for row in rows:
        assert len(row) == 4, "a row needs 4 cells: %r" % row
        cell, kind, default, text = row
        ini, python = option_names(cell)
        does, _, security = text.partition(" **Security:** ")
        out.append(dict(ini=ini, python=python, type=kind, default=default,
                        does=does.strip(), security=security.strip()))
    return out


def parameters(func, leave_out=()):
    """Keyword-usable parameters of ``func`` (no ``self``, ``*args``, ``**kwargs``)."""
    return {name: p for name, p in inspect.signature(func).parameters.items()
            if name not in leave_out and name != "self"
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


# -- what each table documents ----------------------------------------------------

#: table title -> (the callable whose arguments it lists, arguments it leaves out,
#: the option table of wsgiapp.py that spells its .ini options, or None).
COMPONENTS = {
    "WSGIProxyApp options": (WSGIProxyApp, (), wsgiapp.APP_OPTIONS),
    "Transport options": (HTTPTransport, (), wsgiapp.TRANSPORT_OPTIONS),
    "httplib2 transport options": (Httplib2Transport, tuple(parameters(HTTPTransport)),
                                   wsgiapp.TRANSPORT_OPTIONS),
    "WSGIProxyMiddleware options": (WSGIProxyMiddleware, ("app",), wsgiapp.MIDDLEWARE_OPTIONS),
    "MemoryNonceStore options": (MemoryNonceStore, (), None),
    "RedisNonceStore options": (RedisNonceStore, (), None),
    "SecretKeys options": (SecretKeys, (), None),
    "SpawningApplication options": (SpawningApplication, (), wsgiapp.SPAWN_OPTIONS),
    "ExactProxy options": (ExactProxy, (), {**wsgiapp.TRANSPORT_OPTIONS,
                                            **wsgiapp.TUNNEL_OPTIONS}),
    "demo_user filter options": (make_demo_user_filter, ("app", "global_conf"), None),
}


def test_every_table_is_known(tables):
    assert set(tables) == set(COMPONENTS) | {"wsgiproxy serve arguments"}


@pytest.mark.parametrize("title", sorted(COMPONENTS))
def test_table_lists_every_argument_with_its_real_default(tables, title):
    func, leave_out, spec = COMPONENTS[title]
    rows = options(tables[title])
    real = parameters(func, leave_out)
    documented = [row["python"] for row in rows if row["python"]]
    assert sorted(documented) == sorted(real), "%s: arguments differ from the code" % title
    for row in rows:
        assert row["does"] and row["security"], (
            "%s: %s needs what it does, then **Security:** and its meaning"
            % (title, row["ini"] or row["python"]))
        if row["python"]:
            want = real[row["python"]].default
            got = documented_default(row["default"])
            assert got == want and type(got) is type(want), (
                "%s: %s: the page says %r, the code %r" % (title, row["python"], got, want))
        if row["ini"] and spec is not None and row["ini"] in spec:
            word = TYPE_WORDS.get(spec[row["ini"]])
            if word:
                assert row["type"] == word, (
                    "%s: %s is converted by %s, so its type is %r, not %r"
                    % (title, row["ini"], spec[row["ini"]].__name__, word, row["type"]))
        if row["ini"] and spec is not None:
            assert row["ini"] in spec, "%s: %s is not an .ini option" % (title, row["ini"])


def test_shared_transport_options_have_the_same_defaults():
    """The page says the httplib2 transport takes the HTTP transport's options, same defaults."""
    http, httplib2 = parameters(HTTPTransport), parameters(Httplib2Transport)
    for name, p in http.items():
        assert httplib2[name].default == p.default, name


def ini_names(tables, *titles):
    return {row["ini"] for title in titles for row in options(tables[title]) if row["ini"]}


def test_every_ini_option_table_is_documented(tables):
    """Each ``*_OPTIONS`` table of wsgiapp.py: every key on the page, for its component."""
    app = ini_names(tables, "WSGIProxyApp options")
    exact = ini_names(tables, "ExactProxy options")
    transport = (ini_names(tables, "Transport options", "httplib2 transport options")
                 | (exact & set(wsgiapp.TRANSPORT_OPTIONS)))
    expected = {
        "TRANSPORT_OPTIONS": transport,
        "TUNNEL_OPTIONS": exact - transport,
        "APP_OPTIONS": app | transport,
        "MIDDLEWARE_OPTIONS": ini_names(tables, "WSGIProxyMiddleware options"),
        # "every option of egg:WSGIProxy#main except href", as the page says.
        "SPAWN_OPTIONS": ini_names(tables, "SpawningApplication options")
        | ((app | transport) - {"href"}),
    }
    found = sorted(name for name, value in vars(wsgiapp).items()
                   if name.endswith("_OPTIONS") and isinstance(value, dict))
    assert found == sorted(expected), "a new option table in wsgiapp.py: document it"
    for name in found:
        assert set(getattr(wsgiapp, name)) == expected[name], name


def test_ini_only_spellings_are_the_real_ones(tables):
    """Options whose .ini spelling differs from the argument: the spellings the code reads."""
    redis = {row["ini"] for row in options(tables["RedisNonceStore options"])}
    assert set(STORE_PARAMETERS) <= redis
    memory = options(tables["MemoryNonceStore options"])[0]
    assert (memory["ini"], memory["python"]) == ("nonce_cache_size", "max_entries")
    middleware = WSGIProxyMiddleware(lambda e, s: [], nonce_cache_size=7, secret_file=SECRET)
    assert middleware.nonce_store.max_entries == 7


SECRET = SecretKeys.from_secrets("a test secret of the configuration page")


def test_serve_arguments_are_documented(tables):
    header, *rows = tables["wsgiproxy serve arguments"]
    assert header == ["argument", "default", "what it does"]
    assert all(len(row) == 3 and " **Security:** " in row[2] for row in rows)
    documented = [literal(row[0]).split()[0] for row in rows]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        command.main(["serve", "--help"])
    usage = out.getvalue()
    positional = usage.split("positional arguments:")[1].split("options:")[0]
    real = [line.split()[0] for line in positional.splitlines() if line.strip()]
    real += [flag for flag in re.findall(r"^\s+(--[a-z][a-z-]*)", usage.split("options:")[1],
                                         re.MULTILINE) if flag != "--help"]
    # CONFIG.ini is argparse's "config"; the others are spelled alike.
    assert sorted(d.split(".")[0].lower() if d.endswith(".ini") else d
                  for d in documented) == sorted(real)


def test_ini_and_python_examples_make_the_same_proxy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.txt").write_text("a secret for the configuration example\n")
    (tmp_path / "example.ini").write_text(snippet("configuration-ini").text)
    from_ini = loadapp("config:" + str(tmp_path / "example.ini"))
    from_python = snippet("configuration-python").run()["proxy"]
    try:
        for attr in ("href", "keys", "preserve_host", "max_body_size", "rewrite_location",
                     "allowed_methods", "sign_body_max"):
            assert getattr(from_ini, attr) == getattr(from_python, attr), attr
        assert from_ini.keys[0] == ("REMOTE_USER", "AUTH_TYPE")
        assert from_ini.preserve_host is True and from_ini.max_body_size is None
        assert from_ini.transport.read_timeout == from_python.transport.read_timeout == 30.0
        assert from_ini.secret_keys.key_ids == from_python.secret_keys.key_ids
    finally:
        from_ini.close()
        from_python.close()
