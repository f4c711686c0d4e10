r"""The solver contract, the registry, per-grid coefficient plans and noise sources.

A solver is a small object holding only its options. It declares

* ``order`` -- global order of the deterministic method (weak order for stochastic ones), ``strong_order`` for
  stochastic ones;
* ``nfe_per_step`` -- model evaluations per step (nominal; the exact count is in ``SampleResult.nfe``);
* ``stochastic`` -- whether it draws noise;
* ``memory`` -- how many past model outputs its state keeps.

and implements two things:

* ``coefficients(schedule, ts, base) -> dict`` -- every per-step number it needs beyond ``base`` (see
  :func:`base_coefficients`), computed in float64 on the host from the whole grid at once (``ts`` has shape
  ``(N+1,)`` or ``(N+1, B)``); each value has shape ``(N,)`` or ``(N, B)``
  (integers such as a per-step order are kept on the host);
* ``step(model, x, state, c, noise) -> (x_next, state)`` -- one step. ``c`` holds this step's coefficients (Python
  floats for a shared grid, device tensors shaped ``(B, 1, ..., 1)`` for per-sample grids), always with ``t``
  (device tensor ``(B,)``), ``t_next``, ``alpha``, ``sigma``, ``alpha_next``, ``sigma_next``, ``h`` (the step in
  lambda). All history travels in ``state`` (a tuple), never in the solver.

Solvers never loop over steps; :func:`sde_diffusion.sample.sample` is the one loop.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch

from .._ops import lincomb
from ..models import Model
from ..schedules import NoiseSchedule

__all__ = [
    "Solver",
    "register",
    "get_solver",
    "registered_solvers",
    "Plan",
    "prepare_plan",
    "NoiseSource",
    "GeneratorNoise",
    "TensorNoise",
    "BrownianNoise",
    "StepNoise",
    "make_noise_source",
    "base_coefficients",
    "lincomb",
    "host_scalars",
    "HostScalars",
]


class Solver:
    """Base class of every sampler. Subclasses set the class attributes and implement ``step`` (and usually
    ``coefficients``)."""

    name: str = "solver"
    order: float = 1.0
    strong_order: float | None = None
    nfe_per_step: int = 1
    stochastic: bool = False
    memory: int = 0
    #: "backward" integrates from t_max to t_min (sampling), "forward" the other way (inversion / encoding)
    direction: str = "backward"
    #: arXiv reference of the method
    reference: str = ""

    def options(self) -> dict[str, Any]:
        """The solver's options (what identifies its coefficients)."""
        return {}

    def coefficients(self, schedule: NoiseSchedule, ts: torch.Tensor, base: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Per-step float64 coefficients beyond ``base`` (the output of :func:`base_coefficients` for ``ts``)."""
        return {}

    def init_state(self, x: torch.Tensor) -> tuple:
        return ()

    def step(
        self, model: Model, x: torch.Tensor, state: tuple, c: SimpleNamespace, noise: StepNoise | None
    ) -> tuple[torch.Tensor, tuple]:
        raise NotImplementedError

    def final_nfe(self, steps: int) -> int:
        """Exact number of model evaluations for ``steps`` steps (without a final denoising)."""
        return self.nfe_per_step * steps

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"

    def key(self) -> tuple:
        return (type(self), tuple(sorted((k, repr(v)) for k, v in self.options().items())))


# ---------------------------------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------------------------------

_REGISTRY: dict[str, type[Solver]] = {}


def register(name: str) -> Callable[[type[Solver]], type[Solver]]:
    """Class decorator: register a solver class under a snake_case name."""

    def deco(cls: type[Solver]) -> type[Solver]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"solver name {name!r} is already registered")
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return deco


def registered_solvers() -> dict[str, type[Solver]]:
    """Name -> class of every registered solver."""
    return dict(_REGISTRY)


def get_solver(solver: str | type[Solver] | Solver = "ddim", **options: Any) -> Solver:
    """The one registry: a name (with options), a class (with options) or an instance (no options)."""
    if isinstance(solver, Solver):
        if options:
            raise TypeError("options cannot be given together with a solver instance")
        return solver
    if isinstance(solver, type) and issubclass(solver, Solver):
        return solver(**options)
    if isinstance(solver, str):
        if solver not in _REGISTRY:
            raise ValueError(f"unknown solver {solver!r}; known solvers: {', '.join(sorted(_REGISTRY))}")
        cls = _REGISTRY[solver]
        try:
            return cls(**options)
        except TypeError as e:
            raise TypeError(f"bad options for solver {solver!r}: {e}") from e
    raise TypeError(f"solver must be a name, a Solver class or instance, got {type(solver).__name__}")


# ---------------------------------------------------------------------------------------------------------------------
# coefficient plans
# ---------------------------------------------------------------------------------------------------------------------


def base_coefficients(schedule: NoiseSchedule, ts: torch.Tensor) -> dict[str, torch.Tensor]:
    """float64 per-step ``t, t_next, alpha, sigma, alpha_next, sigma_next, lam, lam_next, h`` for a grid."""
    log_a, log_s = schedule._log_alpha(ts), schedule._log_sigma(ts)
    lam = log_a - log_s
    return {
        "t": ts[:-1],
        "t_next": ts[1:],
        "alpha": torch.exp(log_a[:-1]),
        "alpha_next": torch.exp(log_a[1:]),
        "sigma": torch.exp(log_s[:-1]),
        "sigma_next": torch.exp(log_s[1:]),
        "lam": lam[:-1],
        "lam_next": lam[1:],
        "h": lam[1:] - lam[:-1],
    }


class HostScalars:
    """Marker for a per-step multiplier column (see :func:`host_scalars`)."""

    __slots__ = ("values",)

    def __init__(self, values: torch.Tensor):
        self.values = values


def host_scalars(v: torch.Tensor) -> HostScalars | torch.Tensor:
    """Mark a per-step *multiplier* column ``(N,)`` of a shared grid: the plan hands it to the loop as ``N``
    zero-dimensional host tensors of the state's dtype (a per-sample ``(N, B)`` column is returned unchanged and
    becomes device tensors as usual).

    ``torch.mul(x, a)`` with a Python float wraps ``a`` into a tensor on every call (about 1 us on CPU, as much as the
    multiply of a 16k-element state itself), and a 0-d tensor of another dtype costs a conversion; a 0-d host tensor
    of the state's dtype is used as is -- on CUDA too, where it is passed to the kernel as a scalar argument (no
    copy, no synchronisation). Entries exactly equal to 1 (VE schedules) become the float ``1.0``, which
    :func:`lincomb` skips. Meant for the ``a`` of :func:`lincomb`; weights ``w`` stay floats (``add_(y, alpha=w)``
    takes them unwrapped)."""
    return HostScalars(v) if v.ndim == 1 else v


@dataclass
class Plan:
    """Everything the loop needs for one grid: per-step coefficient namespaces, ready for the device."""

    ts: torch.Tensor
    steps: list[SimpleNamespace]
    final: SimpleNamespace  # coefficients at t_end (for the final denoising)
    per_sample: bool
    extra: dict = field(default_factory=dict)


_PLAN_CACHE: OrderedDict = OrderedDict()
_PLAN_CACHE_SIZE = 32
plan_cache_stats = {"hits": 0, "misses": 0}


def _to_step_values(v: Any, n: int, per_sample: bool, device, dtype, ndim: int) -> list:
    if isinstance(v, HostScalars):
        col = v.values.to(dtype)
        return [1.0 if one else e for e, one in zip(col.unbind(0), (v.values == 1.0).tolist())]
    if not isinstance(v, torch.Tensor):
        return list(v) if isinstance(v, (list, tuple)) else [v] * n
    if v.dtype in (torch.int64, torch.int32, torch.bool):
        return v.tolist()
    if not per_sample:
        return v.tolist()
    # (N, B, ...) -> per step (B, 1, ..., 1) on the device; one transfer for the whole table
    dev = v.to(dtype=dtype).reshape(v.shape[:2] + (1,) * (ndim - 1))
    dev = dev.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else dev.to(device)
    return list(dev.unbind(0))


def prepare_plan(solver: Solver, schedule: NoiseSchedule, ts: torch.Tensor, x: torch.Tensor) -> Plan:
    """Compute (or fetch from the cache) the coefficient plan of ``solver`` on grid ``ts`` for states like ``x``."""
    per_sample = ts.ndim == 2
    if per_sample and ts.shape[1] != x.shape[0]:
        raise ValueError(f"per-sample grid has {ts.shape[1]} columns for a batch of {x.shape[0]}")
    key = (
        solver.key(),
        id(schedule),
        repr(schedule),
        ts.shape,
        hash(ts.numpy().tobytes()),
        x.device,
        x.dtype,
        x.ndim,
        x.shape[0],
    )
    hit = _PLAN_CACHE.get(key)
    if hit is not None and hit[0] is schedule:
        _PLAN_CACHE.move_to_end(key)
        plan_cache_stats["hits"] += 1
        return hit[1]
    plan_cache_stats["misses"] += 1
    n = ts.shape[0] - 1
    with torch.no_grad():
        table = base_coefficients(schedule, ts)
        table.update(solver.coefficients(schedule, ts, dict(table)))
    cols = {k: _to_step_values(v, n, per_sample, x.device, x.dtype, x.ndim) for k, v in table.items()}
    # model-time input: device tensor (B,) per grid point, moved once
    tdev = ts.to(x.dtype)
    tdev = tdev[:, None].expand(-1, x.shape[0]) if not per_sample else tdev
    tdev = (
        tdev.contiguous().pin_memory().to(x.device, non_blocking=True)
        if x.device.type == "cuda"
        else tdev.contiguous().to(x.device)
    )
    t_rows = list(tdev.unbind(0))
    steps = []
    for i in range(n):
        c = SimpleNamespace(**{k: v[i] for k, v in cols.items()})
        c.index, c.last = i, i == n - 1
        c.t_host = cols["t"][i]
        c.t, c.t_next_dev = t_rows[i], t_rows[i + 1]
        steps.append(c)
    end = base_coefficients(schedule, ts[-1:].expand(2, *ts.shape[1:]).contiguous())
    end_cols = {k: _to_step_values(end[k], 1, per_sample, x.device, x.dtype, x.ndim)[0] for k in ("alpha", "sigma")}
    final = SimpleNamespace(t=t_rows[n], **end_cols)
    plan = Plan(ts=ts, steps=steps, final=final, per_sample=per_sample)
    _PLAN_CACHE[key] = (schedule, plan)
    while len(_PLAN_CACHE) > _PLAN_CACHE_SIZE:
        _PLAN_CACHE.popitem(last=False)
    return plan


# ---------------------------------------------------------------------------------------------------------------------
# noise sources
# ---------------------------------------------------------------------------------------------------------------------


class NoiseSource:
    """Where a stochastic solver's randomness comes from.

    ``increment(i, ts, x)`` is the standard-normal increment of the driving Brownian motion over step ``i``
    (``(W(s_{i+1}) - W(s_i)) / sqrt(t_i - t_{i+1})`` in ``s = -t``); ``normal(i, k, x)`` is an independent
    standard normal (e.g. for Langevin correctors), ``k`` numbering the draws within a step.
    """

    def increment(self, i: int, ts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def normal(self, i: int, k: int, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class GeneratorNoise(NoiseSource):
    """Independent normals from a ``torch.Generator`` (on the device of ``x``)."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def _draw(self, x):
        return torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)

    def increment(self, i, ts, x):
        return self._draw(x)

    def normal(self, i, k, x):
        return self._draw(x)


def _like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``t`` with ``x``'s dtype and device; a host tensor goes to a CUDA device through pinned memory,
    asynchronously (a pageable host-to-device copy would synchronise)."""
    if t.device == x.device and t.dtype == x.dtype:
        return t
    t = t.to(dtype=x.dtype)
    if x.device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(x.device, non_blocking=True)
    return t.to(x.device)


class TensorNoise(NoiseSource):
    """Pre-drawn normals: ``noise[i]`` is step ``i``'s increment; extra draws come from ``extra[i][k]`` if given,
    else from ``generator``. The tensors are converted to the state's dtype and device once, at the first draw (not
    once per step)."""

    def __init__(
        self, noise: torch.Tensor, extra: torch.Tensor | None = None, generator: torch.Generator | None = None
    ):
        self.noise, self.extra, self.generator = noise, extra, generator

    def increment(self, i, ts, x):
        if i >= self.noise.shape[0]:
            raise ValueError(f"noise has {self.noise.shape[0]} steps; step {i} needs one more")
        if self.noise.shape[1:] != x.shape:
            raise ValueError(f"noise[{i}] has shape {tuple(self.noise.shape[1:])}, state has {tuple(x.shape)}")
        self.noise = _like(self.noise, x)
        return self.noise[i]

    def normal(self, i, k, x):
        if self.extra is None:
            if self.generator is None:
                raise ValueError(
                    "this solver needs independent normals besides `noise`: pass generator= as well "
                    "(or TensorNoise(noise, extra))"
                )
            return torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)
        self.extra = _like(self.extra, x)
        return self.extra[i][k]


class BrownianNoise(NoiseSource):
    """Increments of a torchsde Brownian path (``BrownianInterval`` / ``BrownianTree`` / ``BrownianPath``) indexed
    by ``s = -t``, so that runs with different grids share one path; ``generator`` supplies extra normals."""

    def __init__(self, bm, generator: torch.Generator | None = None):
        self.bm = bm
        self.generator = generator

    def increment(self, i, ts, x):
        if ts.ndim != 1:
            raise ValueError("a Brownian path needs one grid shared by the batch (per-sample grids are not supported)")
        ta, tb = float(ts[i]), float(ts[i + 1])
        dw = self.bm(-ta, -tb)
        return (dw / math.sqrt(ta - tb)).reshape(x.shape).to(device=x.device, dtype=x.dtype)

    def normal(self, i, k, x):
        if self.generator is None:
            raise ValueError("this solver needs independent normals besides the Brownian path: pass a generator")
        return torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)


@dataclass
class StepNoise:
    """The noise handle a solver gets for one step."""

    source: NoiseSource
    i: int
    ts: torch.Tensor

    def increment(self, x: torch.Tensor) -> torch.Tensor:
        return self.source.increment(self.i, self.ts, x)

    def normal(self, x: torch.Tensor, k: int = 0) -> torch.Tensor:
        return self.source.normal(self.i, k, x)


def make_noise_source(noise=None, generator: torch.Generator | None = None) -> NoiseSource | None:
    """Build a :class:`NoiseSource` from what the user passed to ``sample``.

    ``noise`` may be a :class:`NoiseSource`, a tensor of shape ``(steps, *x.shape)`` of standard normals, or a
    torchsde Brownian object (anything callable as ``bm(ta, tb)``); ``generator`` alone gives independent draws.
    """
    if noise is None:
        return None if generator is None else GeneratorNoise(generator)
    if isinstance(noise, NoiseSource):
        return noise
    if isinstance(noise, torch.Tensor):
        return TensorNoise(noise, generator=generator)
    if callable(noise):
        return BrownianNoise(noise, generator)
    raise TypeError(f"noise must be a tensor, a Brownian path or a NoiseSource, got {type(noise).__name__}")
