"""No private name crosses modules: a module of ``sde_diffusion`` never imports an underscored name from another module
of the package (``from .x import _y``) nor reads ``_name`` off another package module it imported
(``from . import x; x._y``). Shared helpers get a public-in-package name and a home. Dunder names and aliases of a
public module (``from .. import schedules as _schedules``) are fine."""

import ast
from pathlib import Path

import sde_diffusion

PACKAGE = Path(sde_diffusion.__file__).parent


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module named by ``from <level dots><node.module> import ...`` inside ``module``."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def crossings(source: str, module: str, is_package: bool = False) -> list[str]:
    """Each place in ``source`` (the text of package module ``module``) where a private name of another package
    module is imported or read."""
    tree = ast.parse(source)
    found, module_aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node)
            if not target.startswith("sde_diffusion") or target == module:
                continue
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"line {node.lineno}: from {target} import {alias.name}")
                else:  # ``from . import schedules``: a module bound to a local name
                    module_aliases[alias.asname or alias.name] = f"{target}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("sde_diffusion") and alias.asname:
                    module_aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr):
            owner = module_aliases.get(node.value.id)
            if owner is not None and owner != module:
                found.append(f"line {node.lineno}: {node.value.id}.{node.attr} ({owner})")
    return found


def test_no_private_name_crosses_modules():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        bad += [f"{module}: {c}" for c in crossings(path.read_text(), module, path.name == "__init__.py")]
    assert not bad, "private names imported or read across modules:\n" + "\n".join(bad)


def test_the_check_catches_what_it_should():
    assert crossings("from .models import Model, _check_prediction\n", "sde_diffusion.analytic")
    assert crossings("from ..studies.convergence import _dist_metric\n", "sde_diffusion.cli.sample")
    assert crossings("from . import schedules\nschedules._as_tensor(1)\n", "sde_diffusion.models")
    assert crossings("from ._ops import _helper\n", "sde_diffusion", is_package=True)
    assert not crossings("from ._ops import lincomb\n", "sde_diffusion.solvers.base")
    assert not crossings(
        "from .. import schedules as _schedules\n_schedules.VPLinear\n", "sde_diffusion.training.train"
    )
    assert not crossings("import torch\ntorch._dynamo.reset()\n", "sde_diffusion.sample")
    assert not crossings("from .x import __version__\n", "sde_diffusion.y")
