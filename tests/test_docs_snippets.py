"""Every code snippet of the documentation runs (docs/**/*.rst; see tests/docsnippets.py).

What happens to a snippet depends on its language and on whether it has a
``:name:``:

==========  ====================================================================
python      unnamed: exec'd, page by page, in order, in one namespace per page,
            in a temporary working directory holding a copy of docs/examples
pycon       unnamed: run as a doctest (ELLIPSIS on), same working directory
ini         unnamed: written to a temporary directory with a copy of
            docs/examples, then every [app:], [pipeline:], [composite:],
            [filter-app:] section is loaded with paste.deploy.loadapp, every
            [filter:] with loadfilter (and applied to an app), every [server:]
            with loadserver
console,    must be named
nginx,
haproxy,
http, json,
javascript
text        never run (diagrams, output, tables)
==========  ====================================================================

A named snippet is left to a test that fetches it with ``snippet("NAME")``
and runs it properly (against real servers on loopback); those of the pages
app, exactproxy, httplib2, middleware, scaleout and spawn are at the end of
this file.  The completeness tests fail on a
language outside the table, a named-only language without a name, a bare
``::`` literal block, a name no test fetches, and a name used twice.
"""

import base64
import collections
import concurrent.futures
import configparser
import doctest
import os
import shlex
import shutil
import threading
import traceback

import pytest
from paste.deploy import loadapp, loadfilter, loadserver  # type: ignore[import-untyped]
from webob import Request

from wsgiproxy.app import WSGIProxyApp
from wsgiproxy.middleware import WSGIProxyMiddleware

from .client import JSON, json_error, parse_answer, request, send_raw, through
from .docsnippets import DOCS, Snippet, _line_spec, pages, parse, snippet, snippets
from .servers import (
    BIN,
    EXAMPLES,
    WSGIPROXY,
    Served,
    WaitressServer,
    capture_signed_request,
    counted,
    echo_app,
    free_port,
    group_gone,
    nginx_files,
    nginx_process,
    pid_gone,
    wait_for_port,
    wait_until,
    with_environ,
    write_secret,
)

#: Languages a snippet may have, and what the suite does with each.
LANGUAGES = {
    "python": "exec'd (unnamed: page by page, in one namespace per page)",
    "pycon": "run as a doctest",
    "ini": "every section loaded with PasteDeploy",
    "console": "run by a named test",
    "nginx": "run by a named test",
    "haproxy": "run by a named test",
    "http": "checked by a named test",
    "json": "checked by a named test",
    "text": "not run: diagrams, output, tables",
    "javascript": "run by a named test (with Node.js)",
}
#: Languages that only a named test can run.
NAMED_ONLY = ("console", "nginx", "haproxy", "http", "json", "javascript")

TESTS = os.path.dirname(os.path.abspath(__file__))

ALL = snippets()


def unnamed(language):
    return [s for s in ALL if s.language == language and not s.name]


# -- running snippets ---------------------------------------------------------------

def workdir(path, monkeypatch):
    """Make ``path`` the working directory, with a copy of docs/examples in it."""
    if os.path.isdir(EXAMPLES):
        shutil.copytree(EXAMPLES, str(path), dirs_exist_ok=True)
    monkeypatch.chdir(path)
    return path


def exec_snippet(s, namespace, replacements=None):
    """exec() a python snippet (Snippet.run); a failure names the page and the line in it."""
    try:
        return s.run(namespace, replacements)
    except Exception:
        pytest.fail("%s: this python snippet raised:\n%s" % (s.where, traceback.format_exc()),
                    pytrace=False)


def run_python(s, tmp_path, monkeypatch, replacements=None, namespace=None):
    """Run a named python snippet in ``tmp_path``; returns its namespace."""
    workdir(tmp_path, monkeypatch)
    # Tracebacks keep the page's line numbers: the replacements add no line.
    assert s.replaced(replacements).count("\n") == s.text.count("\n")
    return exec_snippet(s, namespace if namespace is not None else {"__name__": "__docs__"},
                        replacements)


def close_all(objects):
    """Close what snippets left open: WSGIProxy objects with a close() (pools, children)."""
    for obj in list(objects):
        for item in (obj, getattr(obj, "nonce_store", None)):
            if (type(item).__module__.startswith("wsgiproxy.")
                    and callable(getattr(item, "close", None))):
                item.close()


def run_doctest(s, globs=None):
    test = doctest.DocTestParser().get_doctest(
        s.text, globs if globs is not None else {"__name__": "__docs__"}, s.where,
        os.path.join(DOCS, s.page), (s.content_line or 1) - 1)
    if not test.examples:
        pytest.fail("%s: a pycon snippet without a >>> line" % s.where, pytrace=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report = []
    try:
        result = runner.run(test, out=report.append, clear_globs=False)
    finally:
        close_all(test.globs.values())
    if result.failed:
        pytest.fail("%s: the pycon snippet fails as a doctest:\n%s" % (s.where, "".join(report)),
                    pytrace=False)


def _no_app(environ, start_response):
    start_response("204 No Content", [])
    return []


APP_KINDS = ("app", "application", "pipeline", "composite", "filter-app")


def load_ini(text, directory, where, filename="snippet.ini"):
    """Write ``text`` to ``directory``/``filename`` and load every section with PasteDeploy.

    Returns ``{section: loaded object}``; fails naming the page and line.
    """
    path = os.path.join(str(directory), filename)
    with open(path, "w") as f:
        f.write(text)
    parser = configparser.RawConfigParser(strict=True)
    try:
        parser.read(path)
    except configparser.Error as exc:
        pytest.fail("%s: this ini snippet is not a valid .ini file: %s" % (where, exc),
                    pytrace=False)
    uri = "config:" + path
    loaded, errors = {}, []
    for section in parser.sections():
        kind, _, name = (part.strip() for part in section.partition(":"))
        try:
            if kind in APP_KINDS:
                loaded[section] = loadapp(uri, name=name)
            elif kind == "filter":
                loaded[section] = loadfilter(uri, name=name)(_no_app)
            elif kind == "server":
                loaded[section] = loadserver(uri, name=name)
        except Exception as exc:
            errors.append("[%s]: %s: %s" % (section, type(exc).__name__, exc))
    if errors:
        close_all(loaded.values())
        pytest.fail("%s: this ini snippet does not load:\n  %s" % (where, "\n  ".join(errors)),
                    pytrace=False)
    if not loaded:
        pytest.fail("%s: this ini snippet has no [app:], [pipeline:], [composite:], [filter:] "
                    "or [server:] section to load; complete it, or name it and load it in a "
                    "test" % where, pytrace=False)
    return loaded


def console_commands(s):
    """The commands of a console snippet, each split like a shell command line."""
    commands = [shlex.split(command) for command in s.commands()]
    assert commands, "%s: a console snippet without a '$ ' line" % s.where
    return commands


# -- the generic runners ------------------------------------------------------------

PYTHON_PAGES = sorted({s.page for s in unnamed("python")})


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=["docs/" + p for p in PYTHON_PAGES])
def test_python_snippets_of_the_page_run(page, tmp_path, monkeypatch):
    workdir(tmp_path, monkeypatch)
    namespace = {"__name__": "__docs__"}
    try:
        for s in unnamed("python"):
            if s.page == page:
                exec_snippet(s, namespace)
    finally:
        close_all(namespace.values())


@pytest.mark.parametrize("s", unnamed("pycon"), ids=[s.where for s in unnamed("pycon")])
def test_pycon_snippet_passes_as_a_doctest(s, tmp_path, monkeypatch):
    workdir(tmp_path, monkeypatch)
    run_doctest(s)


@pytest.mark.parametrize("s", unnamed("ini"), ids=[s.where for s in unnamed("ini")])
def test_ini_snippet_loads(s, tmp_path, monkeypatch):
    workdir(tmp_path, monkeypatch)
    close_all(load_ini(s.text, tmp_path, s.where).values())


# -- completeness -------------------------------------------------------------------

def test_every_snippet_has_an_allowed_language():
    wrong = ["%s: .. %s:: %s -- %s" % (
        s.where, s.directive, s.language or "",
        "no language given" + (" (add :language:)" if s.directive == "literalinclude" else "")
        if not s.language else "%r is not one of %s" % (s.language, ", ".join(LANGUAGES)))
        for s in ALL if s.directive != "::" and s.language not in LANGUAGES]
    assert not wrong, "snippets in a language the test suite does not run:\n" + "\n".join(wrong)


def test_named_only_languages_are_named():
    wrong = ["%s: %s snippet without :name:" % (s.where, s.language)
             for s in ALL if s.language in NAMED_ONLY and not s.name]
    assert not wrong, ("these languages are run only by a test that fetches the snippet by "
                       "name; add ':name: PAGE-SOMETHING' and such a test:\n" + "\n".join(wrong))


def test_no_bare_literal_blocks():
    bare = ["%s: bare '::' literal block starting %r" % (s.where, s.text.splitlines()[0][:60])
            for s in ALL if s.directive == "::"]
    assert not bare, ("a '::' literal block is not run; write it as an explicit directive, "
                      "'.. code-block:: LANGUAGE' (one of %s; 'text' for what is not code):\n%s"
                      % (", ".join(LANGUAGES), "\n".join(bare)))


def test_every_named_snippet_is_run_by_a_test():
    sources = []
    for name in sorted(os.listdir(TESTS)):
        if name.endswith(".py") and name != "docsnippets.py":
            with open(os.path.join(TESTS, name), encoding="utf-8") as f:
                sources.append(f.read())
    source = "\n".join(sources)
    missing = ["%s: %s" % (s.where, s.name) for s in ALL
               if s.name and 'snippet("%s")' % s.name not in source]
    assert not missing, ("named snippets that no test fetches with snippet(\"NAME\") "
                         "in tests/*.py:\n" + "\n".join(missing))


def test_snippet_names_are_unique():
    where = collections.defaultdict(list)
    for s in ALL:
        if s.name:
            where[s.name].append(s.where)
    twice = ["%s: %s" % (name, ", ".join(places))
             for name, places in sorted(where.items()) if len(places) > 1]
    assert not twice, "snippet names used more than once:\n" + "\n".join(twice)


# -- the reader (tests/docsnippets.py) ------------------------------------------------

def test_reader_code_block_options_content_and_lines():
    rst = (
        "Title\n"                          # 1
        "=====\n"                          # 2
        "\n"                               # 3
        ".. code-block:: python\n"         # 4
        "   :name: page-first\n"           # 5
        "   :caption: the first one\n"     # 6
        "\n"                               # 7
        "   import os\n"                   # 8
        "\n"                               # 9
        "   if os:\n"                      # 10
        "       print(1)\n"                # 11
        "\n"                               # 12
        "Text after it::\n"                # 13
        "\n"                               # 14
        "    bare block\n"                 # 15
        "      indented more\n"            # 16
        "\n"                               # 17
        ".. code:: ini\n"                  # 18
        "\n"                               # 19
        "  [app:main]\n"                   # 20
        ".. sourcecode:: console\n"        # 21
        "\n"                               # 22
        "   $ ls\n"                        # 23
        "end\n")
    found = parse(rst, "sub/page.rst")
    assert [(s.line, s.language, s.directive) for s in found] == [
        (4, "python", "code-block"), (13, None, "::"), (18, "ini", "code"),
        (21, "console", "sourcecode")]
    first = found[0]
    assert first.page == "sub/page.rst" and first.name == "page-first"
    assert first.options == {"name": "page-first", "caption": "the first one"}
    assert first.text == "import os\n\nif os:\n    print(1)\n"
    assert first.content_line == 8 and first.where == "docs/sub/page.rst:4"
    assert found[1].text == "bare block\n  indented more\n" and found[1].content_line == 15
    assert found[2].text == "[app:main]\n" and found[2].name is None
    assert found[3].text == "$ ls\n"


def test_reader_nested_directives_end_at_the_dedent():
    rst = (".. note::\n"
           "\n"
           "   Inside a note:\n"
           "\n"
           "   .. code-block:: python\n"
           "\n"
           "      x = 1\n"
           "\n"
           "   y = 2 is note text, not code\n"
           "\n"
           "* a list item with a literal::\n"
           "\n"
           "      in the item\n"
           "\n"
           "  more item text\n")
    found = parse(rst)
    assert [(s.line, s.text) for s in found] == [(5, "x = 1\n"), (11, "in the item\n")]


def test_reader_what_is_not_a_literal_block():
    rst = (".. toctree::\n"
           "   :maxdepth: 2\n"
           "\n"
           "   page\n"
           "\n"
           "Section\n"
           ":::::::\n"
           "\n"
           "No block follows this::\n"
           "\n"
           "so nothing is taken.\n"
           "\n"
           ".. a comment that ends like a literal::\n"
           "\n"
           "   still the comment\n"
           "\n"
           ".. code-block:: text\n"
           "\n"
           "   a line of code ending in::\n"
           "\n"
           "       not a bare block\n")
    found = parse(rst)
    assert [(s.line, s.directive) for s in found] == [(17, "code-block")]
    assert found[0].text == "a line of code ending in::\n\n    not a bare block\n"


def test_reader_expanded_and_lone_double_colons():
    rst = ("Paragraph: ::\n"
           "\n"
           "   one\n"
           "\n"
           "::\n"
           "\n"
           "   two\n")
    assert [(s.line, s.text) for s in parse(rst)] == [(1, "one\n"), (5, "two\n")]


def test_reader_options_without_blank_line_and_empty_directive():
    rst = (".. code-block:: python\n"
           "   :linenos:\n"
           "   x = 1\n"
           ".. code-block::\n"
           "\n"
           "text\n")
    first, second = parse(rst)
    assert first.options == {"linenos": ""} and first.text == "x = 1\n"
    assert second.language is None and second.text == "" and second.content_line is None


def test_reader_literalinclude(tmp_path):
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "demo.ini").write_text(
        "# comment\n[app:main]\nuse = egg:X\n# end\n    indented\n")
    rst = (".. literalinclude:: examples/demo.ini\n"
           "   :language: ini\n"
           "   :name: demo-ini\n"
           "\n"
           ".. literalinclude:: examples/demo.ini\n"
           "   :lines: 2-3\n"
           "\n"
           ".. literalinclude:: /examples/demo.ini\n"
           "   :language: ini\n"
           "   :start-after: # comment\n"
           "   :end-before: # end\n"
           "\n"
           ".. literalinclude:: examples/demo.ini\n"
           "   :lines: 5\n"
           "   :dedent:\n")
    whole, lines, between, dedented = parse(rst, "p.rst", str(tmp_path), str(tmp_path))
    assert whole.text == "# comment\n[app:main]\nuse = egg:X\n# end\n    indented\n"
    assert whole.language == "ini" and whole.name == "demo-ini" and whole.content_line is None
    assert lines.text == "[app:main]\nuse = egg:X\n" and lines.language is None
    assert between.text == "[app:main]\nuse = egg:X\n"
    assert dedented.text == "indented\n"
    with pytest.raises(ValueError, match="pyobject"):
        parse(".. literalinclude:: examples/demo.ini\n   :pyobject: x\n", "p.rst", str(tmp_path))


def test_reader_line_spec():
    assert _line_spec("1,3-4,6-", 7) == [0, 2, 3, 5, 6]
    assert _line_spec("-2", 5) == [0, 1]
    with pytest.raises(ValueError):
        _line_spec("4-2", 5)


def test_reader_pages_and_lookup_by_name(tmp_path):
    docs = tmp_path / "docs"
    for folder in ("", "guide", "_build", "examples"):
        (docs / folder).mkdir(parents=True, exist_ok=True)
        (docs / folder / "p.rst").write_text(
            ".. code-block:: python\n   :name: %s-code\n\n   pass\n" % (folder or "top"))
    (docs / "guide" / "q.rst").write_text(
        ".. code-block:: text\n   :name: guide-code\n\n   again\n")
    assert pages(str(docs)) == ["guide/p.rst", "guide/q.rst", "p.rst"]
    assert [s.where for s in snippets(str(docs))] == [
        "docs/guide/p.rst:1", "docs/guide/q.rst:1", "docs/p.rst:1"]
    assert snippet("top-code", str(docs)).page == "p.rst"
    with pytest.raises(KeyError, match="close: top-code"):
        snippet("top-cod", str(docs))
    with pytest.raises(LookupError, match="used 2 times"):
        snippet("guide-code", str(docs))


def test_snippet_replaced_run_commands_and_output():
    python = Snippet("p.rst", 1, "python", None, "x = PORT\ny = x + 1\n", {},
                     content_line=5)
    assert python.replaced({"PORT": "8081"}) == "x = 8081\ny = x + 1\n"
    with pytest.raises(AssertionError, match="docs/p.rst:1: the test expects 'PORT2'"):
        python.replaced({"PORT2": "1"})
    namespace = python.run({"__name__": "__docs__"}, {"PORT": "41"})
    assert namespace["y"] == 42
    with pytest.raises(NameError) as info:
        python.run()
    assert info.traceback[-1].lineno + 1 == 5  # the page's line of "x = PORT"
    console = Snippet("c.rst", 3, "console", "c", "$ gunicorn --paste a.ini \\\n"
                      "      -b 127.0.0.1:8001\n-rw------- 1 me me 44 secret.txt\n\n"
                      "$ ls -l\ntotal 0\n", {})
    assert console.commands() == ["gunicorn --paste a.ini -b 127.0.0.1:8001", "ls -l"]
    assert console.output() == ["-rw------- 1 me me 44 secret.txt", "total 0"]
    with pytest.raises(ValueError, match="ends in a continuation"):
        Snippet("c.rst", 3, "console", None, "$ ls \\\n", {}).commands()


def test_failures_name_the_page_and_line(tmp_path):
    rst = (".. code-block:: python\n"   # 1
           "\n"
           "   x = 1\n"                 # 3
           "   x / 0\n"                 # 4
           "\n"
           ".. code-block:: ini\n"      # 6
           "\n"
           "   [app:main]\n"
           "   use = egg:WSGIProxy#nothing\n"
           "\n"
           ".. code-block:: pycon\n"    # 11
           "\n"
           "   >>> 1 + 1\n"             # 13
           "   3\n")
    python, ini, pycon = parse(rst, "x.rst")
    with pytest.raises(pytest.fail.Exception) as info:
        exec_snippet(python, {})
    assert "docs/x.rst:1: this python snippet raised" in str(info.value)
    assert 'x.rst", line 4' in str(info.value) and "ZeroDivisionError" in str(info.value)
    with pytest.raises(pytest.fail.Exception, match=r"(?s)docs/x.rst:6: .*\[app:main\]: LookupError"):
        load_ini(ini.text, tmp_path, ini.where)
    with pytest.raises(pytest.fail.Exception, match=r"(?s)docs/x.rst:11: .*line 13"):
        run_doctest(pycon)
    with pytest.raises(ValueError, match="docs/x.rst:1: literalinclude cannot read"):
        parse(".. literalinclude:: missing.ini\n", "x.rst", str(tmp_path))


def test_completeness_checks_see_what_they_look_for():
    """The checks above cannot pass vacuously: the reader finds the docs' snippets."""
    assert len(ALL) > 20
    assert {"python", "ini", "pycon"} <= {s.language for s in ALL}
    assert snippet("app-call-from-view").page == "app.rst"


# -- helpers for the named snippets ----------------------------------------------------

def json_request(url, user=None, remote_addr=None):
    """A webob request asking for JSON (``REMOTE_USER`` and ``REMOTE_ADDR`` set if given)."""
    req = Request.blank(url, headers=JSON)
    if user:
        req.remote_user = user
    if remote_addr:
        req.remote_addr = remote_addr
    return req


# -- exactproxy.rst -------------------------------------------------------------------

def test_exactproxy_call(tmp_path, monkeypatch, capsys):
    s = snippet("exactproxy-call")
    with WaitressServer(echo_app) as backend:
        ns = run_python(s, tmp_path, monkeypatch, {'"8081"': '"%d"' % backend.port})
    res = ns["res"]
    assert res.status == "200 OK"
    seen = res.json
    assert (seen["REQUEST_METHOD"], seen["PATH_INFO"], seen["QUERY_STRING"]) == (
        "GET", "/status", "verbose=1")
    assert seen["HTTP_HOST"] == "localhost:80"  # from HTTP_HOST, as the page says
    assert capsys.readouterr().out.startswith("200 OK {")


# -- app.rst ----------------------------------------------------------------------------

def test_app_ini_options(tmp_path, secret_file):
    s = snippet("app-ini-options")
    with WaitressServer(WSGIProxyMiddleware(echo_app, secret_file=secret_file)) as backend:
        text = s.replaced({"http://127.0.0.1:8081/": backend.url + "/"})
        proxy = load_ini(text, tmp_path, s.where)["app:main"]
        front_app = with_environ(proxy, REMOTE_USER="alice",
                                 **{"myapp.roles": ["admin", "buyer"]})
        with WaitressServer(front_app) as front:
            answer = request(front.port, "/cart?x=1", headers={
                "Host": "shop.example", "X-Forwarded-For": "203.0.113.7"})
            assert answer.status == 200, answer
            seen = answer.json()
            assert seen["REMOTE_USER"] == "alice" and seen["myapp.roles"] == ["admin", "buyer"]
            assert seen["wsgiproxy.key_id"]  # signed with secret.txt, verified
            assert seen["HTTP_HOST"] == "shop.example" and seen["PATH_INFO"] == "/cart"
            # trusted_proxies = 127.0.0.1: the incoming X-Forwarded-For is kept.
            assert seen["HTTP_X_FORWARDED_FOR"] == "203.0.113.7, 127.0.0.1"
            # forwarded = true
            assert "host=shop.example" in seen["HTTP_FORWARDED"]
            assert seen["HTTP_X_FORWARDED_PROTO"] == "http"
            answer = request(front.port, "/cart", "PUT", body=b"x")
            assert answer.status == 405 and answer.headers["Allow"] == "GET, HEAD, POST"
            answer = request(front.port, "/upload", "POST", body=b"x" * (10485760 + 1))
            assert answer.status == 413
            answer = request(front.port, "/upload", "POST", body=b"x" * 1000)
            assert answer.status == 200 and answer.json()["CONTENT_LENGTH"] == "1000"
        proxy.close()


def test_app_call_from_view(tmp_path, monkeypatch, secret_file):
    s = snippet("app-call-from-view")
    with WaitressServer(WSGIProxyMiddleware(echo_app, secret_file=secret_file)) as backend:
        ns = run_python(s, tmp_path, monkeypatch,
                        {"http://127.0.0.1:8081/api": backend.url + "/api"})
        seen = ns["view"](json_request("/orders", user="alice"))
    try:
        assert seen["PATH_INFO"] == "/items" and seen["QUERY_STRING"] == "page=2"
        assert seen["REMOTE_USER"] == "alice" and seen["wsgiproxy.key_id"]
        assert seen["SCRIPT_NAME"] == ""
        # The API is down now: the view gets a 502 in JSON, as the page says.
        answer = ns["view"](json_request("/orders", user="alice"))
        assert answer["error"]["code"] == 502
    finally:
        close_all(ns.values())


# -- middleware.rst ---------------------------------------------------------------------

def test_middleware_backend_ini_served_by_wsgiproxy_serve(tmp_path, secret_file):
    s = snippet("middleware-backend-ini")

    def served(replacements):
        """The snippet, with these replacements, served by ``wsgiproxy serve`` on a free port."""
        port = free_port()
        path = tmp_path / ("backend-%d.ini" % port)
        path.write_text(s.replaced(dict(replacements, **{
            "127.0.0.1:8080": "127.0.0.1:%d" % port})))
        return Served([WSGIPROXY, "serve", path], port, tmp_path / ("backend-%d.log" % port),
                      cwd=str(tmp_path))

    with served({}) as server:
        proxy = WSGIProxyApp("http://127.0.0.1:%d" % server.port, secret_file=secret_file,
                             string_keys=["REMOTE_USER"])
        res = json_request("http://shop.example/cart", user="alice",
                           remote_addr="203.0.113.9").get_response(proxy)
        assert res.status_int == 200, res.text
        seen = res.json
        assert seen["REMOTE_USER"] == "alice" and seen["wsgiproxy.key_id"]
        assert seen["REMOTE_ADDR"] == "203.0.113.9"
        assert seen["SERVER_NAME"] == "shop.example" and seen["PATH_INFO"] == "/cart"
        answer = request(server.port, "/cart", accept="application/json")  # unsigned, direct
        assert json_error(answer, 403)["message"].startswith("X-WSGIProxy-Signature: missing")
        proxy.close()
    # The comment is right: without clear_untrusted_proxy_headers = false,
    # waitress drops signed headers and every signed request is refused.
    with served({"clear_untrusted_proxy_headers = false": "#"}) as server:
        proxy = WSGIProxyApp("http://127.0.0.1:%d" % server.port, secret_file=secret_file)
        res = json_request("http://shop.example/cart",
                           remote_addr="203.0.113.9").get_response(proxy)
        assert "x-forwarded-for did not arrive" in json_error(res, 403)["message"]
        proxy.close()


def test_middleware_python_signed_and_behind_nginx(tmp_path, monkeypatch, secret_file):
    ns = run_python(snippet("middleware-python-signed"), tmp_path, monkeypatch,
                    {'"/etc/wsgiproxy/secret"': repr(secret_file)})
    with WaitressServer(ns["application"]) as backend:
        proxy = WSGIProxyApp(backend.url, secret_file=secret_file, string_keys=["REMOTE_USER"])
        res = json_request("http://shop.example/cart", user="alice",
                           remote_addr="203.0.113.9").get_response(proxy)
        assert res.status_int == 200
        assert res.text == snippet("middleware-python-output").text
        proxy.close()
        answer = request(backend.port, "/cart", headers=dict(JSON, **{
            "X-Forwarded-For": "6.6.6.6"}))
        assert "missing" in json_error(answer, 403)["message"]  # unsigned: refused

    # Behind nginx: the same application, wrapped the other way.  127.0.0.1
    # plays the nginx host; 127.0.0.2, also this machine, some other peer.
    s = snippet("middleware-python-nginx")
    nginx_ns = dict(ns, application=ns["application"].app)
    exec_snippet(s, nginx_ns, {'"10.0.0.5"': '"127.0.0.1"'})
    forwarded = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
                 "X-Forwarded-Host": "shop.example"}
    with WaitressServer(nginx_ns["application"]) as backend:
        from_nginx = (200, b"https://shop.example/cart from 203.0.113.9 as None\n")
        answer = request(backend.port, "/cart", headers=forwarded)
        assert (answer.status, answer.body) == from_nginx
        answer = request(backend.port, "/cart", headers=forwarded, source="127.0.0.2")
        assert (answer.status, answer.body) == (
            200, b"http://127.0.0.1:%d/cart from 127.0.0.2 as None\n" % backend.port)
        # What the page says front_proxy_ips is for: nginx passes a client's
        # WSGIProxy headers on, and they are not believed from it.
        forged = dict(forwarded, **{"X-WSGIProxy-Str-0": "REMOTE_USER admin",
                                    "X-Forwarded-Server": "evil.example"})
        answer = request(backend.port, "/cart", headers=forged)
        assert (answer.status, answer.body) == from_nginx


# -- spawn.rst ------------------------------------------------------------------------

def spawn_files(directory):
    (directory / "backend.ini").write_text(snippet("spawn-backend-ini").text)
    write_secret(directory)


def check_spawned(app):
    """A request through the spawning app reaches its child, verified, as the front saw it."""
    try:
        with WaitressServer(with_environ(app, REMOTE_USER="alice"), threads=8) as front:
            answer = request(front.port, "/hello?format=json",
                             headers={"Host": "front.example"})
        assert answer.status == 200, answer
        seen = answer.json()
        assert seen["REMOTE_USER"] == "alice" and seen["wsgiproxy.key_id"]
        assert seen["HTTP_HOST"] == "front.example" and seen["PATH_INFO"] == "/hello"
        assert app.idle_shutdown == 600
        [pid] = app.pids
        assert seen["wsgiproxy.sample.pid"] == pid
    finally:
        app.close()
    assert pid_gone(pid) and group_gone(pid)


def test_spawn_python(tmp_path, monkeypatch):
    spawn_files(tmp_path)
    ns = run_python(snippet("spawn-python"), tmp_path, monkeypatch)
    check_spawned(ns["application"])


def test_spawn_ini(tmp_path):
    spawn_files(tmp_path)
    s = snippet("spawn-ini")
    check_spawned(load_ini(s.text, tmp_path, s.where, "spawn.ini")["app:main"])


# -- httplib2.rst ------------------------------------------------------------------------

class AuthBackend:
    """/public is cacheable for a minute; /private wants proxyuser's password."""

    def __init__(self):
        self.hits = collections.Counter()
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        path = environ["PATH_INFO"]
        with self.lock:
            self.hits[path] += 1
            count = self.hits[path]
        headers = [("Content-Type", "text/plain")]
        if path == "/public":
            body = b"public %d" % count
            headers.append(("Cache-Control", "max-age=60"))
        elif environ.get("HTTP_AUTHORIZATION") == "Basic " + base64.b64encode(
                b"proxyuser:s3cret").decode():
            body = b"private"
        else:
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="api"'),
                                                ("Content-Length", "0")])
            return []
        start_response("200 OK", headers + [("Content-Length", str(len(body)))])
        return [body]


def check_httplib2(get, backend):
    first, second = get("/public"), get("/public")
    assert first.text == second.text == "public 1"  # the second from the cache
    assert "Age" in second.headers and backend.hits["/public"] == 1
    private = get("/private")
    assert (private.status_int, private.text) == (200, "private")  # logged in as proxyuser


def test_httplib2_python(tmp_path, monkeypatch):
    backend = AuthBackend()
    with WaitressServer(backend) as server:
        ns = run_python(snippet("httplib2-python"), tmp_path, monkeypatch, {
            '"/var/cache/wsgiproxy"': repr(str(tmp_path / "cache")),
            '"backend.internal:8080"': '"127.0.0.1:%d"' % server.port})
        try:
            check_httplib2(lambda path: through(ns["app"], server.port, path), backend)
        finally:
            close_all(ns.values())
    assert os.listdir(str(tmp_path / "cache"))


def test_httplib2_ini(tmp_path):
    s = snippet("httplib2-ini")
    backend = AuthBackend()
    with WaitressServer(backend) as server:
        text = s.replaced({"backend.internal:8080": "127.0.0.1:%d" % server.port})
        app = load_ini(text, tmp_path, s.where)["app:main"]
        try:
            check_httplib2(lambda path: Request.blank(path).get_response(app), backend)
        finally:
            app.close()
    assert os.listdir(str(tmp_path / "var" / "cache"))


# -- scaleout.rst --------------------------------------------------------------------------

#: Where RedisNonceStore keeps its nonces (the pages do not change the prefix).
NONCES = "wsgiproxy:nonce:*"


def check_replay_refused(port, secret):
    """A captured signed request, sent again and again on new connections: served once."""
    data = capture_signed_request(secret, "/replay?format=json")
    answers = [parse_answer(send_raw(port, data)) for _ in range(8)]
    assert [answer.status for answer in answers] == [200] + [403] * 7, answers
    for answer in answers[1:]:
        assert "replayed" in json_error(answer)["message"]


def test_scaleout_gunicorn_workers_share_the_redis_store(tmp_path, redis_server, secret_file):
    s = snippet("scaleout-backend-ini")
    (tmp_path / "backend.ini").write_text(
        s.replaced({"redis://127.0.0.1:6379/0": "redis://127.0.0.1:%d/0" % redis_server.port}))
    [command] = console_commands(snippet("scaleout-gunicorn"))
    assert command[0] == "gunicorn" and "127.0.0.1:8001" in command
    port = free_port()
    command = [os.path.join(BIN, "gunicorn")] + [
        "127.0.0.1:%d" % port if arg == "127.0.0.1:8001" else arg for arg in command[1:]]
    with Served(command, port, tmp_path / "gunicorn.log", cwd=str(tmp_path)):
        proxy = WSGIProxyApp("http://127.0.0.1:%d" % port, secret_file=secret_file,
                             string_keys=["REMOTE_USER"])
        answers, workers = [], set()

        def batch():  # 8 at once, until a second worker (still loading at first) served some
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                new = list(pool.map(lambda i: json_request("http://shop.example/p/%d" % i,
                                                           "alice").get_response(proxy),
                                    range(len(answers), len(answers) + 8)))
            for res in new:
                assert res.status_int == 200, res.text
                assert res.json["REMOTE_USER"] == "alice"
                assert res.json["SERVER_NAME"] == "shop.example"
                workers.add(res.json["wsgiproxy.sample.pid"])
            answers.extend(new)
            return len(workers) >= 2
        wait_until(batch, 30, "two gunicorn workers to serve requests")
        proxy.close()
        # Several workers served them, and each wrote its nonces to the one store.
        assert len(redis_server.keys(NONCES)) == len(answers)
        check_replay_refused(port, secret_file)


def test_scaleout_redis_python(tmp_path, monkeypatch, redis_server):
    s = snippet("scaleout-redis-python")
    write_secret(tmp_path)  # the snippet's "secret.txt", in its working directory
    ns = run_python(s, tmp_path, monkeypatch, {"127.0.0.1:6379": "127.0.0.1:%d"
                                               % redis_server.port},
                    namespace={"__name__": "__docs__", "app": echo_app})
    app = ns["app"]
    try:
        with WaitressServer(app) as backend:
            proxy = WSGIProxyApp(backend.url, secret_file="secret.txt",
                                 string_keys=["REMOTE_USER"])
            res = json_request("/x", "alice").get_response(proxy)
            assert res.status_int == 200 and res.json["REMOTE_USER"] == "alice"
            proxy.close()
            assert len(redis_server.keys(NONCES)) == 1
            check_replay_refused(backend.port, os.path.abspath("secret.txt"))
    finally:
        app.nonce_store.close()


def test_scaleout_nginx_in_front_of_two_backends(tmp_path, secret_file):
    counts = {"a": 0, "b": 0}

    def backend(name):
        return WSGIProxyMiddleware(counted(echo_app, counts, name), secret_file=secret_file)

    prefix = tmp_path / "nginx"
    prefix.mkdir()
    port = free_port()
    with WaitressServer(backend("a")) as a, WaitressServer(backend("b")) as b:
        conf = snippet("scaleout-nginx").replaced({
            "127.0.0.1:8001": "127.0.0.1:%d" % a.port, "127.0.0.1:8002": "127.0.0.1:%d" % b.port,
            "127.0.0.1:8080": "127.0.0.1:%d" % port,
            # This nginx keeps its files in its own prefix, not the system's.
            "http {": "http {\n" + nginx_files(prefix)})
        (prefix / "nginx.conf").write_text(conf)
        main = "daemon off; pid %s/nginx.pid; error_log %s/error.log;" % (prefix, prefix)
        if os.geteuid() == 0:
            main += " user root;"
        with nginx_process(prefix, prefix / "nginx.conf", "-g", main) as nginx:
            wait_for_port(port, process=nginx.proc)
            s = snippet("scaleout-nginx-proxy-ini")
            proxy = load_ini(s.replaced({"http://127.0.0.1:8080": "http://127.0.0.1:%d" % port}),
                             tmp_path, s.where)["app:main"]
            for i in range(10):
                res = json_request("http://shop.example:8080/item/%d" % i, "alice",
                                   remote_addr="203.0.113.9").get_response(proxy)
                assert res.status_int == 200, res.text
                seen = res.json
                assert seen["REMOTE_USER"] == "alice" and seen["REMOTE_ADDR"] == "203.0.113.9"
                assert seen["HTTP_HOST"] == "shop.example:8080" and seen["wsgiproxy.key_id"]
            proxy.close()
    assert counts["a"] >= 3 and counts["b"] >= 3, counts  # round robin over both
