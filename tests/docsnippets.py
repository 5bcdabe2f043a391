"""The code snippets of the documentation (docs/**/*.rst), for the tests that run them.

Every code block of the docs is run by the test suite (see
tests/test_docs_snippets.py for the rules).  This module finds them::

    from .docsnippets import snippet, snippets   # tests/ is a package

    s = snippet("app-call-from-view")   # the block with ":name: app-call-from-view"
    s.text        # the code, dedented, as a reader sees it (ends with a newline)
    s.page        # "app.rst": the path relative to docs/
    s.line        # 1-based line of the directive in that page
    s.language    # "python", "ini", ... (None for a bare "::" block)
    s.replaced({"127.0.0.1:8081": "127.0.0.1:41234"})  # the text, the page's values changed
    s.run(namespace)              # exec() a python snippet; tracebacks show the page's lines
    s.commands(), s.output()      # a console snippet's "$ " commands, and what they print

A snippet is one of

* ``.. code-block:: LANG`` (also ``.. code::`` and ``.. sourcecode::``) and
  its indented content;
* ``.. literalinclude:: PATH`` with ``:language: LANG``: the text is the
  file's content (after ``:start-after:``, ``:start-at:``, ``:end-before:``,
  ``:end-at:``, ``:lines:``, ``:dedent:``, ``:prepend:``, ``:append:``, in
  Sphinx's order);
* a bare literal block: a paragraph ending in ``::`` (or a ``::`` alone)
  followed by an indented block.  Its ``language`` is None and its
  ``directive`` is ``"::"``; the suite refuses them.

The reader follows reStructuredText's indentation rules line by line: the
directive's options are the indented ``:key: value`` lines right after it;
its content is the indented block after them, which ends at the first
non-blank line indented no more than the directive.  The pages under
docs/_build and docs/examples are not read.
"""

import dataclasses
import difflib
import functools
import os
import re
import textwrap

__all__ = ["CODE_DIRECTIVES", "DOCS", "Snippet", "parse", "snippet", "snippets"]

#: The documentation's source directory.
DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
#: Folders of docs/ that hold no pages.
SKIPPED_DIRS = ("_build", "examples")
#: Directives whose content is code.
CODE_DIRECTIVES = ("code-block", "code", "sourcecode", "literalinclude")

_DIRECTIVE = re.compile(r"(\s*)\.\.\s+([A-Za-z][\w:+.-]*)::(?:\s+(.*?))?\s*\Z")
_OPTION = re.compile(r"\s+:([^:\s][^:]*):(?:\s+(.*?))?\s*\Z")
_LIST_MARKER = re.compile(r"(\s*)([-*+\u2022]|#\.|\(?[0-9]+[.)]|\(?[a-zA-Z#][.)])\s+(?=\S)")
_ADORNMENT = re.compile(r"\s*:{3,}\s*\Z")


@dataclasses.dataclass(frozen=True)
class Snippet:
    """One code block of a page.

    ``page`` is the path relative to docs/ (``"deployment.rst"``), ``line``
    the 1-based line of the directive (of the ``::`` for a bare block),
    ``language`` the directive's language, ``name`` its ``:name:`` (or
    None), ``text`` the dedented code, ``options`` every ``:key: value`` of
    the directive.  ``directive`` says which directive it was, and
    ``content_line`` is the page line where ``text`` starts (None for a
    literalinclude, whose text comes from another file).
    """

    page: str
    line: int
    language: str | None
    name: str | None
    text: str
    options: dict
    directive: str = "code-block"
    content_line: int | None = None

    @property
    def where(self):
        """``docs/PAGE:LINE``, for messages."""
        return "docs/%s:%d" % (self.page, self.line)

    def __repr__(self):
        return "<Snippet %s %s%s>" % (self.where, self.language,
                                       " " + self.name if self.name else "")

    def replaced(self, replacements):
        """``text`` with each ``{old: new}`` replaced (a free port for the page's fixed one,
        say); every ``old`` must be in it, else the page changed and the test must follow."""
        text = self.text
        for old, new in (replacements or {}).items():
            if old not in text:
                raise AssertionError("%s: the test expects %r in this snippet; update the test"
                                     % (self.where, old))
            text = text.replace(old, new)
        return text

    def run(self, namespace=None, replacements=None):
        """exec() a python snippet (after :meth:`replaced`) in ``namespace``, which may
        predefine names; returns the namespace.  Tracebacks name the page and its lines."""
        namespace = {"__name__": "__docs__"} if namespace is None else namespace
        padding = "\n" * ((self.content_line or 1) - 1)
        code = compile(padding + self.replaced(replacements), os.path.join(DOCS, self.page),
                       "exec")
        exec(code, namespace)
        return namespace

    def commands(self):
        """The commands of a console snippet: each ``$ `` line, joined with the lines that
        follow a trailing ``\\``, as written (``shlex.split`` one to run it)."""
        commands, current = [], None
        for line in self.text.splitlines():
            if current is None:
                if not line.startswith("$ "):
                    continue
                current = line[2:]
            else:
                current += " " + line.strip()
            if current.endswith("\\"):
                current = current[:-1].rstrip()
                continue
            commands.append(current.strip())
            current = None
        if current is not None:
            raise ValueError("%s: the console snippet ends in a continuation" % self.where)
        return commands

    def output(self):
        """The non-blank lines of a console snippet that are not commands: what they print."""
        out, continued = [], False
        for line in self.text.splitlines():
            command = continued or line.startswith("$ ")
            continued = command and line.endswith("\\")
            if not command and line.strip():
                out.append(line)
        return out


def _indent(line):
    return len(line) - len(line.lstrip(" "))


def _blank(line):
    return not line.strip()


def _text_indent(line):
    """Where a paragraph line's text starts (after a list marker, if any)."""
    match = _LIST_MARKER.match(line)
    return match.end() if match else _indent(line)


def _block(lines, start, indent):
    """The indented block beginning at ``start``: lines until the first non-blank line
    indented ``indent`` or less.  Returns ``(first, end)``: the first non-blank line
    of the block (or None when it is empty) and the index after its last line."""
    i = start
    first = None
    last = start - 1
    while i < len(lines):
        line = lines[i]
        if not _blank(line):
            if _indent(line) <= indent:
                break
            if first is None:
                first = i
            last = i
        i += 1
    return first, last + 1


def _dedent(lines):
    """The lines as one dedented text ending with a newline ("" when all are blank)."""
    lines = [line.rstrip() for line in lines]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        return ""
    return textwrap.dedent("\n".join(lines)) + "\n"


def _line_spec(spec, total):
    """``"1,3-5,8-"`` as 0-based indexes (``-3`` from the start, ``8-`` to the end)."""
    wanted = []
    for part in spec.split(","):
        part = part.strip()
        begin, dash, end = part.partition("-")
        try:
            if not dash:
                wanted.append(int(begin) - 1)
                continue
            if not begin and not end:
                raise ValueError
            first = int(begin) if begin else 1
            last = int(end) if end else max(first, total)
            if first > last or first < 1:
                raise ValueError
        except ValueError:
            raise ValueError("invalid :lines: spec %r" % spec) from None
        wanted.extend(range(first - 1, last))
    return wanted


def _include(path, options, where):
    """The text a ``literalinclude`` shows."""
    for option in ("pyobject", "diff"):
        if option in options:
            raise ValueError("%s: literalinclude option :%s: is not supported by "
                             "tests/docsnippets.py" % (where, option))
    try:
        with open(path, encoding=options.get("encoding", "utf-8")) as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeError) as exc:
        raise ValueError("%s: literalinclude cannot read %s: %s" % (where, path, exc)) from None
    for option, after in (("start-after", True), ("start-at", False)):
        if option in options:
            found = [i for i, line in enumerate(lines) if options[option] in line]
            if not found:
                raise ValueError("%s: :%s: %r not found in %s"
                                 % (where, option, options[option], path))
            lines = lines[found[0] + 1:] if after else lines[found[0]:]
    for option, before in (("end-before", True), ("end-at", False)):
        if option in options:
            found = [i for i, line in enumerate(lines) if options[option] in line]
            if not found:
                raise ValueError("%s: :%s: %r not found in %s"
                                 % (where, option, options[option], path))
            lines = lines[:found[0]] if before else lines[:found[0] + 1]
    if options.get("lines"):
        wanted = _line_spec(options["lines"], len(lines))
        if any(i >= len(lines) for i in wanted):
            raise ValueError("%s: :lines: %s is beyond the %d lines of %s"
                             % (where, options["lines"], len(lines), path))
        lines = [lines[i] for i in wanted]
    if "dedent" in options:
        if options["dedent"]:
            cut = int(options["dedent"])
            lines = [line[cut:] for line in lines]
        else:
            lines = textwrap.dedent("\n".join(lines)).split("\n")
    if options.get("prepend"):
        lines.insert(0, options["prepend"])
    if options.get("append"):
        lines.append(options["append"])
    return "\n".join(lines) + "\n" if lines else ""


def parse(text, page="page.rst", base_dir=None, docs=DOCS):
    """The snippets of one page's reStructuredText ``text``, in order.

    ``base_dir`` is the page's directory, for ``literalinclude`` paths
    (default: where ``page`` is under ``docs``); an include path starting
    with ``/`` is relative to ``docs``.
    """
    lines = text.expandtabs(8).splitlines()
    if base_dir is None:
        base_dir = os.path.dirname(os.path.join(docs, page))
    found = []
    i = 0
    while i < len(lines):
        line = lines[i]
        match = _DIRECTIVE.match(line)
        if match:
            indent = len(match.group(1))
            directive = match.group(2)
            argument = (match.group(3) or "").strip()
            if directive not in CODE_DIRECTIVES:
                if directive in ("raw", "math", "parsed-literal", "productionlist"):
                    i = _block(lines, i + 1, indent)[1]  # not reStructuredText inside
                else:
                    i += 1  # its content is reStructuredText: read on
                continue
            options = {}
            j = i + 1
            while j < len(lines) and not _blank(lines[j]) and _indent(lines[j]) > indent:
                option = _OPTION.match(lines[j])
                if not option:
                    break
                options[option.group(1).strip()] = (option.group(2) or "").strip()
                j += 1
            first, end = _block(lines, j, indent)
            where = "docs/%s:%d" % (page, i + 1)
            if directive == "literalinclude":
                if first is not None:
                    raise ValueError("%s: literalinclude takes no content" % where)
                if not argument:
                    raise ValueError("%s: literalinclude without a path" % where)
                path = (os.path.join(docs, argument.lstrip("/")) if argument.startswith("/")
                        else os.path.join(base_dir, argument))
                code = _include(path, options, where)
                language = options.get("language") or None
                content_line = None
            else:
                code = _dedent(lines[j:end]) if first is not None else ""
                language = argument or None
                content_line = first + 1 if first is not None else None
            found.append(Snippet(page, i + 1, language, options.get("name") or None, code,
                                 options, directive, content_line))
            i = end
            continue
        stripped = line.strip()
        if line.lstrip().startswith(".."):
            # A comment, a target or a substitution definition: its indented
            # lines are not text.
            i = _block(lines, i + 1, _indent(line))[1]
            continue
        if stripped.endswith("::") and not _ADORNMENT.match(line):
            indent = _text_indent(line)
            j = i + 1
            if j < len(lines) and _blank(lines[j]):
                first, end = _block(lines, j, indent)
                if first is not None:
                    found.append(Snippet(page, i + 1, None, None, _dedent(lines[first:end]),
                                         {}, "::", first + 1))
                    i = end
                    continue
        i += 1
    return found


def pages(docs=DOCS):
    """Paths (relative to ``docs``) of every page, sorted."""
    out = []
    for root, dirs, files in os.walk(docs):
        rel = os.path.relpath(root, docs)
        dirs[:] = sorted(d for d in dirs if not (rel == "." and d in SKIPPED_DIRS)
                         and not d.startswith("."))
        for name in files:
            if name.endswith(".rst"):
                out.append(os.path.normpath(os.path.join(rel, name)).replace(os.sep, "/"))
    return sorted(out)


@functools.lru_cache(maxsize=4)
def _all(docs):
    found = []
    for page in pages(docs):
        with open(os.path.join(docs, page), encoding="utf-8") as f:
            found.extend(parse(f.read(), page, os.path.dirname(os.path.join(docs, page)), docs))
    return tuple(found)


def snippets(docs=DOCS):
    """Every snippet of every page under ``docs``, page by page, in order."""
    return list(_all(os.path.abspath(docs)))


def snippet(name, docs=DOCS):
    """The one snippet with ``:name: NAME``; KeyError (naming close matches) if there is none."""
    named = [s for s in snippets(docs) if s.name == name]
    if len(named) == 1:
        return named[0]
    if named:
        raise LookupError("snippet name %r is used %d times: %s"
                          % (name, len(named), ", ".join(s.where for s in named)))
    names = sorted({s.name for s in snippets(docs) if s.name})
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    raise KeyError("no snippet has :name: %s in docs/ (%s; %d named snippets in all)"
                   % (name, "close: " + ", ".join(close) if close else "nothing close",
                      len(names)))
