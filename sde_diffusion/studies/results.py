r"""The result of a convergence study and its versioned JSON form.

JSON schema (``schema_version`` 2) of one study::

    {
      "schema_version": 2,
      "kind": "sde_diffusion.convergence_study",
      "problem": "ring", "schedule": "vp-linear", "grid": "logsnr", "seed": 0, "n": 512,
      "dtype": "float64", "device": "cpu", "roundoff": float,
      "reference": {"ode": {...}, "sde": {...} | null},   # kind, tolerance, estimated error, sweep
      "dist_metric": "sliced_w2" | "gaussian_w2" | null, "dist_floor": float | null,
      "solvers": {label: {"name", "options", "order", "strong_order", "nfe_per_step", "stochastic", "memory",
                          "adaptive", "reference"}},
      "runs": [{"solver", "nfe_budget", "steps", "nfe", "error", "error_max", "dist_error", "wall_time",
                "error_median", "refined"}],
      "chains": {label: {"budgets", "steps", "nfe", "diffs", "refinement_stop", "refinement_time"}},
      "fits": {label: {"error": OrderFit | null, "dist_error": OrderFit | null, "richardson": OrderFit | null}}
    }

``runs`` holds every point: the requested budgets (``refined: false``, the practical range) and those added by
the automatic refinement (``refined: true``). ``chains`` is each solver's doubling chain (the largest requested
budget and its halvings present in the request, then the refined budgets): ``diffs[k]`` is the RMS difference of
the final states of solves ``k`` and ``k + 1`` (the Richardson differences), ``refinement_stop`` why the refinement
stopped (``"reached"``, ``"floor"``, ``"max_nfe"``, ``"time"``, or ``null`` without refinement).

``OrderFit`` is ``{"asymptotic", "pre_asymptotic", "effective": LineFit | null, "floor", "excluded", "declared",
"nfe", "errors", "local_orders", "status", "verdict", "drift", "trend_persists", "nfe_needed", "floor_nfe", "tol",
"confirm_tol"}``: ``nfe``/``errors`` the points fitted (floor excluded), ``local_orders`` between successive ones,
``status`` one of ``confirmed``, ``below``, ``above``, ``measured``, ``not_reached``, ``floor`` and ``verdict`` its
one-line text (see [`fitting`][sde_diffusion.studies.fitting]). ``LineFit`` is ``{"order", "stderr", "intercept",
"nfe_min", "nfe_max",
"points", "residual"}``. The ``richardson`` fit is over the nominal NFE (``steps x nfe_per_step``) of each chain's
coarse solves.

``error`` is the pathwise RMS error (against the exact flow or the ODE reference for deterministic solvers; against the
SDE reference on the same Brownian path -- the strong error -- for stochastic ones), ``error_median`` the median over
the batch of the per-sample RMS error, ``error_max`` the largest coordinate error; ``dist_error`` the distributional
error against exact samples; ``wall_time`` seconds. New fields may be added without a version change; renaming or
removing one, or changing what one means, bumps ``schema_version``. Version 2 (from version 1): every run has
``refined``; ``chains`` and ``roundoff`` are new; an ``OrderFit``'s ``asymptotic`` is ``null`` unless the local orders
support an asymptotic range (version 1 always fitted the trailing points), and it carries the points, local orders,
status and verdict.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .fitting import OrderFit, RichardsonEstimate, richardson_orders

__all__ = ["SCHEMA_VERSION", "Run", "StudyResult"]

SCHEMA_VERSION = 2
_KIND = "sde_diffusion.convergence_study"


def document_fields(d: dict[str, Any], kind: str, version: int, what: str) -> dict[str, Any]:
    """The fields of the JSON document ``d`` other than its ``kind`` and ``schema_version`` tags; ``ValueError``
    (naming ``what`` was expected) unless the tags are ``kind`` and ``version``."""
    if d.get("kind") != kind or d.get("schema_version") != version:
        raise ValueError(
            f"not a version-{version} {what} (kind={d.get('kind')!r}, schema_version={d.get('schema_version')!r})"
        )
    return {k: v for k, v in d.items() if k not in ("kind", "schema_version")}


@dataclass
class Run:
    """One solver configuration at one NFE budget."""

    solver: str
    nfe_budget: int
    steps: int
    nfe: int
    error: float | None
    error_max: float | None
    dist_error: float | None
    wall_time: float
    error_median: float | None = None
    refined: bool = False


@dataclass
class StudyResult:
    """Everything a convergence study measured; ``samples`` (final states of 2-D problems, by ``(label, budget)``)
    and ``target`` (exact samples) are kept in memory for plots and are not serialised."""

    problem: str
    schedule: str
    grid: str
    seed: int
    n: int
    dtype: str
    device: str
    reference: dict[str, Any]
    dist_metric: str | None
    dist_floor: float | None
    solvers: dict[str, dict[str, Any]]
    runs: list[Run]
    fits: dict[str, dict[str, OrderFit | None]] = field(default_factory=dict)
    chains: dict[str, dict[str, Any]] = field(default_factory=dict)
    roundoff: float = 0.0
    samples: dict = field(default_factory=dict, repr=False)
    target: Any = field(default=None, repr=False)

    # ---- access ---------------------------------------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        return list(self.solvers)

    @property
    def budgets(self) -> list[int]:
        """The requested NFE budgets (the practical range; refined budgets excluded)."""
        return sorted({r.nfe_budget for r in self.runs if not r.refined})

    @property
    def all_budgets(self) -> list[int]:
        """Requested and refined NFE budgets."""
        return sorted({r.nfe_budget for r in self.runs})

    def runs_of(self, label: str) -> list[Run]:
        return sorted((r for r in self.runs if r.solver == label), key=lambda r: r.nfe_budget)

    def series(self, label: str, metric: str = "error") -> tuple[list[int], list[float]]:
        """``(actual NFE, metric)`` of one solver, one point per distinct NFE, without missing values."""
        seen: dict[int, float] = {}
        for r in self.runs_of(label):
            v = getattr(r, metric)
            if v is not None:
                seen[r.nfe] = v
        return list(seen), list(seen.values())

    def fit(self, label: str, metric: str = "error") -> OrderFit | None:
        """The order fit of ``metric`` (``"error"``, ``"dist_error"`` or ``"richardson"``) of one solver."""
        return self.fits.get(label, {}).get(metric)

    def richardson(self, label: str) -> list[RichardsonEstimate]:
        """The reference-free order estimates of one solver along its doubling chain (last = finest)."""
        c = self.chains.get(label)
        if not c or len(c["diffs"]) < 2:
            return []
        return richardson_orders(c["steps"], c["diffs"], c["nfe"])

    # ---- serialisation ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": _KIND,
            "problem": self.problem,
            "schedule": self.schedule,
            "grid": self.grid,
            "seed": self.seed,
            "n": self.n,
            "dtype": self.dtype,
            "device": self.device,
            "reference": self.reference,
            "dist_metric": self.dist_metric,
            "dist_floor": self.dist_floor,
            "solvers": self.solvers,
            "roundoff": self.roundoff,
            "runs": [asdict(r) for r in self.runs],
            "chains": self.chains,
            "fits": {
                label: {m: (None if f is None else f.to_dict()) for m, f in fits.items()}
                for label, fits in self.fits.items()
            },
        }

    def to_json(self, **kwargs) -> str:
        kwargs.setdefault("indent", 2)
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudyResult:
        d = document_fields(d, _KIND, SCHEMA_VERSION, "convergence study")
        fits = {
            label: {m: (None if f is None else OrderFit.from_dict(f)) for m, f in v.items()}
            for label, v in d["fits"].items()
        }
        return cls(
            problem=d["problem"],
            schedule=d["schedule"],
            grid=d["grid"],
            seed=d["seed"],
            n=d["n"],
            dtype=d["dtype"],
            device=d["device"],
            reference=d["reference"],
            dist_metric=d["dist_metric"],
            dist_floor=d["dist_floor"],
            solvers=d["solvers"],
            runs=[Run(**r) for r in d["runs"]],
            fits=fits,
            chains=d["chains"],
            roundoff=d["roundoff"],
        )

    @classmethod
    def from_json(cls, text: str) -> StudyResult:
        return cls.from_dict(json.loads(text))

    # ---- reports ---------------------------------------------------------------------------------------------------
    def to_markdown(self, metric: str = "error") -> str:
        """Markdown tables: the error at every NFE budget, then the fitted orders (see
        [`report`][sde_diffusion.studies.report])."""
        from .report import study_markdown

        return study_markdown(self, metric)

    def plot(self, metric: str = "error", ax=None):
        """Log-log error against NFE with reference slopes (see
        [`plot_convergence`][sde_diffusion.studies.plots.plot_convergence])."""
        from .plots import plot_convergence

        return plot_convergence(self, metric=metric, ax=ax)
