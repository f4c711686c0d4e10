r"""Solver configurations for studies: ``"name:key=value,key=value"`` strings, NFE budgets and their step counts.

A study runs a list of *solver configurations*: a registry name with options. They are written as
``"dpm_solver++:order=3"`` or ``"ddim:eta=1"`` (several options separated by ``,`` or ``:``); values are parsed as
``int``, then ``float``, then ``bool`` (``true``/``false``/``yes``/``no``), then ``None`` (``none``), else kept as
strings. A ``(name, options)`` tuple, a [`Solver`][sde_diffusion.solvers.base.Solver] class or instance work too.

NFE budget to steps: the largest number of steps whose exact cost ``solver.final_nfe(steps)`` fits the budget
(``nfe // nfe_per_step`` for most solvers, ``(nfe + 1) // 2`` for Heun, whose last step is an Euler step).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from ..solvers import Solver, get_solver, registered_solvers

__all__ = [
    "SolverSpec",
    "parse_value",
    "parse_solver_spec",
    "solver_info",
    "solver_option_names",
    "default_solvers",
]

_TRUE, _FALSE = ("true", "yes", "on"), ("false", "no", "off")


def parse_value(text: str) -> Any:
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, ``"true"`` -> True, ``"none"`` -> None, anything else stays a string."""
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    if low == "none":
        return None
    return text


def _format_value(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


@dataclass
class SolverSpec:
    """A registry name with options; ``label`` is how reports name it (``name:k=v,...`` by default). ``solver``
    carries an instance of a class that is not the registered one (a user's subclass):
    [`build`][sde_diffusion.studies.specs.SolverSpec.build] returns it."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    solver: Solver | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if not self.label:
            opts = ",".join(f"{k}={_format_value(v)}" for k, v in self.options.items())
            self.label = f"{self.name}:{opts}" if opts else self.name

    def build(self) -> Solver:
        """The solver instance (raises ``ValueError`` naming the valid solvers / options)."""
        if self.solver is not None:
            return self.solver
        registry = registered_solvers()
        if self.name not in registry:
            raise ValueError(f"unknown solver {self.name!r}; valid solvers: {', '.join(sorted(registry))}")
        valid = solver_option_names(registry[self.name])
        unknown = [k for k in self.options if k not in valid]
        if unknown:
            raise ValueError(
                f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for "
                f"solver {self.name!r}; valid options: {', '.join(valid) if valid else '(none)'}"
            )
        try:
            return get_solver(self.name, **self.options)
        except (TypeError, ValueError) as e:
            raise ValueError(f"bad options for solver {self.label!r}: {e}") from e


def solver_option_names(cls: type[Solver]) -> list[str]:
    """Keyword options of a solver class (from its ``__init__`` signature)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def parse_solver_spec(spec) -> SolverSpec:
    """A [`SolverSpec`][sde_diffusion.studies.specs.SolverSpec] from ``"name:k=v,k=v"``, ``(name, options)``, a Solver
    class/instance or a spec."""
    if isinstance(spec, SolverSpec):
        return spec
    if isinstance(spec, Solver):
        if registered_solvers().get(spec.name) is type(spec):
            return SolverSpec(spec.name, dict(spec.options()))
        return SolverSpec(spec.name, dict(spec.options()), label=type(spec).__name__, solver=spec)
    if isinstance(spec, type) and issubclass(spec, Solver):
        return SolverSpec(spec.name, {})
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
        return SolverSpec(spec[0], dict(spec[1]))
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a solver is given as 'name' or 'name:key=value,...', got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    options: dict[str, Any] = {}
    for item in rest.replace(":", ",").split(","):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"solver option {item!r} in {spec!r} is not of the form key=value")
        options[key.strip()] = parse_value(value.strip())
    return SolverSpec(name.strip(), options)


def solver_info(solver: Solver) -> dict[str, Any]:
    """The declared metadata of a solver instance (what reports print next to measured orders)."""
    return {
        "name": solver.name,
        "options": dict(solver.options()),
        "order": float(solver.order),
        "strong_order": None if solver.strong_order is None else float(solver.strong_order),
        "nfe_per_step": int(solver.nfe_per_step),
        "stochastic": bool(solver.stochastic),
        "memory": int(solver.memory),
        "adaptive": bool(solver.adaptive),
        "reference": str(solver.reference),
    }


#: preferred deterministic solvers of a default study, in order; those not registered are skipped
_DEFAULT_CANDIDATES = (
    "ddim",
    "heun",
    "dpm_solver++:order=2,multistep=true",
    "dpm_solver++:order=3,multistep=true",
    "dpm_solver++:order=3,multistep=true,update=exact",
    "unipc",
    "deis",
    "ipndm",
)


def default_solvers() -> list[str]:
    """``ddim``, ``heun`` and whichever high-order solvers are registered (DPM-Solver++ 2M, 3M and 3M with exact
    weights, UniPC, DEIS, iPNDM), with their default options where a configuration is not spelled out."""
    registry = registered_solvers()
    out = []
    for spec in _DEFAULT_CANDIDATES:
        s = parse_solver_spec(spec)
        if s.name not in registry:
            continue
        try:
            s.build()
        except (ValueError, TypeError):
            s = SolverSpec(s.name)  # the option names differ from what we expected: use the defaults
        if s.label not in out:
            out.append(s.label)
    return out
