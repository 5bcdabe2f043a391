"""The layers of docs/architecture.rst, checked against the code's own imports.

Every module of the package has a layer; a module may import from its own
layer and the ones below, never from one above.  A new module must be given
a layer here (the test fails until it is), which is the moment to decide
where it belongs.
"""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "wsgiproxy")

# Lowest first: the order of the table in docs/architecture.rst.
LAYERS = [
    # cookies: Set-Cookie attribute rewriting, pure text like abnf; not the wire
    # protocol (X-WSGIProxy-* between proxy and middleware), and any layer may use it.
    ("ground", ["wsgiproxy", "wsgiproxy.errors", "wsgiproxy.abnf", "wsgiproxy.converters",
                "wsgiproxy.cookies"]),
    # structured: RFC 9651 fields; rfc9421: the standard signature format over them.
    ("wire protocol", ["wsgiproxy.protocol.headers", "wsgiproxy.protocol.signature",
                       "wsgiproxy.protocol.forwarded", "wsgiproxy.protocol.structured",
                       "wsgiproxy.protocol.rfc9421"]),
    # The protocol package's __init__ is its edge: it re-exports the stateful
    # classes of keys under their old path and fills in the clock and nonce.
    ("keys and stores", ["wsgiproxy.keys", "wsgiproxy.redisstore", "wsgiproxy.protocol"]),
    ("HTTP/1.1", ["wsgiproxy.http11"]),
    # tunnel: the byte relay of a switched (101) connection, sockets only.
    ("transport", ["wsgiproxy.connection", "wsgiproxy.tunnel", "wsgiproxy.transport",
                   "wsgiproxy.httplib2transport", "wsgiproxy.httplib2transport.*"]),
    # upgrade: which WSGI server hands over the client's socket, the tunnel limit.
    ("WSGI glue", ["wsgiproxy.responses", "wsgiproxy.upgrade", "wsgiproxy.forwarding",
                   "wsgiproxy.exactproxy", "wsgiproxy.observe", "wsgiproxy.metrics",
                   "wsgiproxy.balancer", "wsgiproxy.signing",
                   "wsgiproxy.app", "wsgiproxy.middleware", "wsgiproxy.middleware.*",
                   "wsgiproxy.spawn", "wsgiproxy.spawn.*", "wsgiproxy.sampleapp"]),
    ("deployment", ["wsgiproxy.configfile", "wsgiproxy.wsgiapp", "wsgiproxy.command"]),
]


def _modules():
    """``{dotted name: path}`` of every module of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), os.path.dirname(PACKAGE))
                dotted = rel[:-3].replace(os.sep, ".")
                dotted = dotted.removesuffix(".__init__")
                found[dotted] = os.path.join(folder, name)
    return found


def _layer(module):
    for rank, (_, patterns) in enumerate(LAYERS):
        for pattern in patterns:
            if module == pattern or (pattern.endswith(".*")
                                     and module.startswith(pattern[:-1])):
                return rank
    return None


def _imports(module, path):
    """The package modules ``module`` imports at its top level (type-checking blocks included)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    names = set()
    nodes = list(tree.body)
    for node in list(nodes):  # if TYPE_CHECKING: / try: blocks at the top level
        if isinstance(node, (ast.If, ast.Try)):
            nodes.extend(node.body)
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("wsgiproxy"):
                names.add(target)
                for alias in node.names:  # "from . import protocol" imports a module
                    if "%s.%s" % (target, alias.name) in _ALL:
                        names.add("%s.%s" % (target, alias.name))
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("wsgiproxy"))
    names.discard(module)
    return sorted(n for n in names if n in _ALL)


_ALL = _modules()


def test_every_module_has_a_layer():
    assert [m for m in sorted(_ALL) if _layer(m) is None] == []


@pytest.mark.parametrize("module", sorted(_ALL))
def test_imports_run_downwards(module):
    rank = _layer(module)
    upward = ["%s (%s)" % (name, LAYERS[_layer(name)][0]) for name in _imports(module, _ALL[module])
              if _layer(name) is not None and _layer(name) > rank]
    assert upward == [], "%s (%s) imports from a layer above" % (module, LAYERS[rank][0])


def test_the_check_sees_an_upward_import(tmp_path):
    """The parser resolves relative imports: a transport importing the app is caught."""
    path = tmp_path / "x.py"
    path.write_text("from ..app import WSGIProxyApp\nfrom . import cache\n")
    assert _imports("wsgiproxy.httplib2transport.x", str(path)) == [
        "wsgiproxy.app", "wsgiproxy.httplib2transport", "wsgiproxy.httplib2transport.cache"]
    assert _layer("wsgiproxy.app") > _layer("wsgiproxy.httplib2transport.x")


def test_module_sizes_stay_readable():
    """No module grows past about 600 lines (issue 14): split it along its jobs instead."""
    sizes = {m: sum(1 for _ in open(p)) for m, p in _ALL.items()}
    assert {m: n for m, n in sizes.items() if n > 650} == {}


_TYPED_DUNDERS = ("__init__", "__call__", "__iter__", "__enter__", "__exit__")


def _unannotated(tree):
    """``name: [what lacks an annotation]`` for the public functions and methods of a module."""
    found = {}

    def visit(body, prefix, public):
        for node in body:
            if isinstance(node, ast.ClassDef):
                visit(node.body, prefix + node.name + ".", public and not node.name.startswith("_"))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if not public or (node.name.startswith("_") and node.name not in _TYPED_DUNDERS):
                    continue
                args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                if prefix and args and args[0].arg in ("self", "cls"):
                    args = args[1:]
                args += [a for a in (node.args.vararg, node.args.kwarg) if a]
                missing = [a.arg for a in args if a.annotation is None]
                if node.returns is None and node.name != "__init__":
                    missing.append("return")
                if missing:
                    found[prefix + node.name] = missing

    visit(tree.body, "", True)
    return found


@pytest.mark.parametrize("module", sorted(_ALL))
def test_public_functions_carry_type_annotations(module):
    """The package ships py.typed: what users call is annotated (mypy checks the rest)."""
    with open(_ALL[module]) as f:
        assert _unannotated(ast.parse(f.read())) == {}


def test_the_annotation_check_sees_a_missing_one():
    tree = ast.parse("def f(a: int, b) -> None: ...\nclass C:\n    def m(self, x: int): ...\n"
                     "    def _private(self, y): ...\nclass _Hidden:\n    def m(self, z): ...\n")
    assert _unannotated(tree) == {"f": ["b"], "C.m": ["return"]}
