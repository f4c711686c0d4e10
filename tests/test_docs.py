"""The documentation cannot drift from the code.

* Every name in ``__all__`` of the package and of each public submodule is rendered on an API page (a ``:::``
  directive of mkdocstrings for the name, for its module, or for the module that defines it and re-exports it).
  ``python tests/test_docs.py`` lists the missing names with the module to add to a page.
* The fenced ``python`` blocks of the pages marked runnable (front matter ``runnable: true``) run, page by page in one
  namespace, in a scratch folder; a ``text`` block right after a ``python`` block is its expected output (numbers
  compared to 3 significant digits, so a changed result fails). Blocks fenced as ``py`` are shown but not run (they
  train a network or need a GPU); ``python examples/...`` scripts are included verbatim on the examples page.
* Every arXiv id cited in the docs, the package's docstrings and the examples is on the references page.
* Docstrings hold no control characters (a maths docstring that is not a raw string turns ``\\frac``, ``\\beta``,
  ``\\alpha`` into form feeds, backspaces and bells, and its maths silently disappears from the API pages).
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import io
import math
import pkgutil
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PACKAGE = "sde_diffusion"
DIRECTIVE = re.compile(r"^:::\s+(\S+)[ \t]*\n((?:[ \t]+\S.*\n?)*)", re.MULTILINE)


# ---------------------------------------------------------------------------------------------------------------------
# __all__ coverage
# ---------------------------------------------------------------------------------------------------------------------


def public_modules() -> list[str]:
    """The package and every submodule without an underscore in its dotted name (optional ones that fail to import
    are left out: they are documented where their dependency is installed)."""
    pkg = importlib.import_module(PACKAGE)
    names = [PACKAGE]
    for info in pkgutil.walk_packages(pkg.__path__, PACKAGE + "."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        names.append(info.name)
    out = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        out.append(name)
    return out


def api_pages() -> dict[str, str]:
    """Text of every page with ``:::`` directives (the API section and guides that end with their module's reference),
    the generated CLI reference included."""
    pages = {str(p.relative_to(DOCS)): p.read_text() for p in sorted(DOCS.rglob("*.md"))}
    sys.path.insert(0, str(DOCS))
    try:
        import hooks  # docs/hooks.py: generates api/cli.md at build time
    finally:
        sys.path.remove(str(DOCS))
    pages["api/cli.md (generated)"] = hooks.cli_reference_markdown()
    return pages


def directives(pages: dict[str, str]) -> dict[str, bool | set[str]]:
    """identifier -> True (all its members rendered), False (``members: false``) or the set of listed members."""
    out: dict[str, bool | set[str]] = {}
    for text in pages.values():
        for m in DIRECTIVE.finditer(text):
            ident, options = m.group(1), m.group(2)
            members: bool | set[str] = True
            mm = re.search(r"members:\s*(.+)", options)
            if mm:
                value = mm.group(1).strip()
                if value.lower() == "false":
                    members = False
                elif value.startswith("["):
                    members = {s.strip().strip("'\"") for s in value.strip("[]").split(",") if s.strip()}
            prev = out.get(ident, False)
            if prev is True or members is True:
                out[ident] = True
            elif isinstance(prev, set) or isinstance(members, set):
                out[ident] = (prev or set()) | (members or set())
            else:
                out[ident] = False
    return out


def renders(directive: dict[str, bool | set[str]], module: str, name: str) -> bool:
    """Whether ``::: module`` (or ``::: module.name``) is on a page and renders ``name``."""
    if f"{module}.{name}" in directive:
        return True
    members = directive.get(module, False)
    return members is True or (isinstance(members, set) and name in members)


def missing_names() -> list[str]:
    directive = directives(api_pages())
    missing = []
    for modname in public_modules():
        module = importlib.import_module(modname)
        for name in getattr(module, "__all__", []):
            if name.startswith("__"):  # __version__ and the like: module metadata, not API
                continue
            obj = getattr(module, name)
            if renders(directive, modname, name):
                continue
            home = getattr(obj, "__module__", None) if (inspect.isclass(obj) or inspect.isroutine(obj)) else None
            qual = getattr(obj, "__qualname__", name)
            if home and (renders(directive, home, qual) or f"{home}.{qual}" in directive):
                continue
            # a re-export: rendered where another documented module that lists it in its __all__ holds the same object
            if any(
                renders(directive, other, name)
                and name in getattr(sys.modules.get(other), "__all__", [])
                and getattr(sys.modules[other], name, None) is obj
                for other in directive
                if other in sys.modules and other != modname
            ):
                continue
            where = f" (defined in {home}: add `::: {home}` to a page)" if home else f" (add `::: {modname}` to a page)"
            missing.append(f"{modname}.{name}{where}")
    return missing


def test_every_public_name_is_on_an_api_page():
    missing = missing_names()
    assert not missing, "names in __all__ missing from the API pages:\n  " + "\n  ".join(missing)


def test_coverage_check_can_fail():
    directive = directives({"x.md": "::: sde_diffusion.models\n    options:\n      members: [Model]\n"})
    assert renders(directive, "sde_diffusion.models", "Model")
    assert not renders(directive, "sde_diffusion.models", "PREDICTIONS")
    assert not renders(
        directives({"x.md": "::: sde_diffusion\n    options:\n      members: false\n"}), PACKAGE, "sample"
    )


def test_api_directives_name_real_objects():
    """A ``:::`` directive with a typo fails the docs build; name it here first."""
    unknown = []
    for ident in directives(api_pages()):
        parts = ident.split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
                break
            except ImportError:
                continue
        else:
            unknown.append(ident)
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                unknown.append(ident)
                break
            obj = getattr(obj, attr)
    assert not unknown, f"::: directives naming no object: {unknown}"


# ---------------------------------------------------------------------------------------------------------------------
# runnable pages
# ---------------------------------------------------------------------------------------------------------------------

FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def runnable_pages() -> list[Path]:
    pages = []
    for path in sorted(DOCS.rglob("*.md")):
        head = path.read_text().split("\n---", 1)[0]
        if path.read_text().startswith("---\n") and re.search(r"^runnable:\s*true\s*$", head, re.MULTILINE):
            pages.append(path)
    return pages


def code_blocks(text: str) -> list[tuple[str, str | None]]:
    """``(python source, expected output or None)`` for every ``python`` block, in page order."""
    blocks = [(m.group(1), m.group(2), m.start(), m.end()) for m in FENCE.finditer(text)]
    out = []
    for i, (lang, body, _start, end) in enumerate(blocks):
        if lang != "python":
            continue
        expected = None
        if i + 1 < len(blocks) and blocks[i + 1][0] == "text" and not text[end : blocks[i + 1][2]].strip():
            expected = blocks[i + 1][1]
        out.append((body, expected))
    return out


def same_output(got: str, expected: str) -> bool:
    """Equal text with every number equal to 3 significant digits (and numbers printed as tensors kept)."""
    g_lines = [line.rstrip() for line in got.strip().splitlines()]
    e_lines = [line.rstrip() for line in expected.strip().splitlines()]
    if len(g_lines) != len(e_lines):
        return False
    for g, e in zip(g_lines, e_lines):
        if NUMBER.sub("#", g).replace(" ", "") != NUMBER.sub("#", e).replace(" ", ""):
            return False
        for a, b in zip(NUMBER.findall(g), NUMBER.findall(e)):
            fa, fb = float(a), float(b)
            if not math.isclose(fa, fb, rel_tol=5e-3, abs_tol=1e-12) and f"{fa:.3g}" != f"{fb:.3g}":
                return False
    return True


def test_same_output_can_fail():
    assert same_output("nfe 20, error 1.234e-03\n", "nfe 20, error 1.23e-03")
    assert not same_output("nfe 20, error 1.3e-03", "nfe 20, error 1.23e-03")
    assert not same_output("nfe 21, error 1.23e-03", "nfe 20, error 1.23e-03")
    assert not same_output("a\nb", "a")


@pytest.mark.parametrize("page", runnable_pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_runnable_page(page, tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    dtype = torch.get_default_dtype()
    try:
        for i, (source, expected) in enumerate(code_blocks(page.read_text())):
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                exec(compile(source, f"{page.name}[block {i}]", "exec"), namespace)
            if expected is not None:
                assert same_output(buf.getvalue(), expected), (
                    f"{page.name} block {i}: output\n{buf.getvalue()}\ndiffers from the page's\n{expected}"
                )
    finally:
        torch.set_default_dtype(dtype)


def test_there_are_runnable_pages():
    assert len(runnable_pages()) >= 5


# ---------------------------------------------------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------------------------------------------------

ARXIV = re.compile(r"(?<![\d.])(\d{4}\.\d{4,5})(?![\d])")


def cited_arxiv_ids() -> dict[str, str]:
    """arXiv id -> one file citing it, over the docs pages, the package's docstrings and comments, and examples."""
    cited: dict[str, str] = {}
    sources = [*DOCS.rglob("*.md"), *(ROOT / PACKAGE).rglob("*.py"), *(ROOT / "examples").glob("*.py")]
    for path in sources:
        if path.name == "references.md":
            continue
        for line in path.read_text().splitlines():
            if "arxiv" in line.lower():
                for arxiv_id in ARXIV.findall(line):
                    cited.setdefault(arxiv_id, str(path.relative_to(ROOT)))
    return cited


def test_every_cited_paper_is_on_the_references_page():
    listed = set(ARXIV.findall((DOCS / "references.md").read_text()))
    missing = {i: where for i, where in cited_arxiv_ids().items() if i not in listed}
    assert not missing, f"arXiv ids cited but not on docs/references.md: {missing}"
    assert len(listed) >= 30


# ---------------------------------------------------------------------------------------------------------------------
# docstrings
# ---------------------------------------------------------------------------------------------------------------------


def test_docstrings_hold_no_control_characters():
    bad = []
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=False)
                if doc and re.search(r"[\x00-\x08\x0b-\x1f]", doc):
                    bad.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 1)}")
    assert not bad, "docstrings with control characters (use r-strings for maths): " + ", ".join(bad)


if __name__ == "__main__":
    names = missing_names()
    print("\n".join(names) if names else "every public name is on an API page")
    sys.exit(1 if names else 0)
