r"""Candidate (issue 14): DPM-Solver-v3 with empirical model statistics (Zheng, Lu, Chen & Zhu 2023,
arXiv:2310.13268), implemented from the paper's equations and evaluated on the accuracy benchmark's problems.

The reparametrised ODE
----------------------
With \(\lambda = \log\alpha - \log\sigma\) (half log-SNR, increasing along sampling) the PF-ODE is
\(\mathrm{d}x/\mathrm{d}\lambda = (\mathrm{d}\log\alpha/\mathrm{d}\lambda)\, x - \sigma\epsilon_\theta\), i.e.
\(\mathrm{d}(x/\alpha)/\mathrm{d}\lambda = -e^{-\lambda}\epsilon_\theta\). Given per-coordinate functions
\(l_\lambda, s_\lambda, b_\lambda\) (the *empirical model statistics*, EMS) define

\[ f_\theta = \frac{\sigma\epsilon_\theta - l_\lambda x}{\alpha}, \qquad
   L = \int l, \quad S = \int s, \quad \tilde B_a(\lambda) = \int_{\lambda_a}^{\lambda} e^{-(S_r - S_a)} b_r\,dr, \qquad
   g_\theta = e^{-(S_\lambda - S_a)} f_\theta - \tilde B_a(\lambda). \]

Then \(\mathrm{d}(x/\alpha)/\mathrm{d}\lambda = -l\,x/\alpha - f_\theta\) and, exactly,

\[ \frac{x_b}{\alpha_b} = e^{-(L_b - L_a)} \Big[ \frac{x_a}{\alpha_a}
   - \int_{\lambda_a}^{\lambda_b} e^{(L - L_a) + (S - S_a)} \big(g_\theta + \tilde B_a\big)\, d\lambda \Big]. \]

A solver of order \(n + 1\) replaces \(g_\theta\) by its Taylor polynomial at \(\lambda_a\), with the derivatives
\(g^{(k)}\) from the polynomial through \(n + 1\) nodes (the paper's Eq. (8)/(9)); the *pseudo-order* variant takes
\(g^{(k)} \approx k!\,g[\lambda_0, \dots, \lambda_k]\) (divided differences) instead. The coefficients
\(I_k = \int e^{(L-L_a)+(S-S_a)} (\lambda-\lambda_a)^k/k!\) and
\(C = \int e^{(L-L_a)+(S-S_a)} \tilde B_a\) are computed once per grid in float64 by the composite trapezoid rule
on a fine \(\lambda\) grid (the EMS knots, each interval cut into ``m`` pieces) with one Richardson extrapolation
(``m``, ``2m``, ``4m``: Romberg, error \(O(h^6)\)).

Special cases: \(l = 1, s = b = 0\) gives \(f = -x_0\) and the update is DPM-Solver++ (data prediction; multistep with
the exact exponentially weighted polynomial weights); \(l = 0, s = -1, b = 0\) gives \(g = e^{-\lambda_a}\epsilon\) and
the update is DPM-Solver (noise prediction). Both are checked in ``tests/test_candidates_dpm_solver_v3.py``.

EMS (the paper's optimal coefficients)
--------------------------------------
On a \(\lambda\)-uniform grid of ``K + 1`` knots from \(\lambda(t_{max})\) to \(\lambda(t_{min})\), along
trajectories of a pilot batch (a fine-step solve):

* \(l^*_\lambda = \mathbb E\,\mathrm{diag}\,\nabla_x (\sigma\epsilon_\theta)\), the minimiser of
  \(\mathbb E\|\nabla_x(\sigma\epsilon_\theta) - \mathrm{diag}(l)\|_F^2\) (the Jacobian diagonal by central finite
  differences along the coordinate axes -- exact up to \(O(\delta^2)\); ``probes > 0`` uses the Rademacher estimator
  \(\mathbb E_v[v \odot Jv]\) instead);
* \(s^*, b^* = \arg\min \mathbb E\|f^{(1)}_\theta - s f_\theta - b\|^2\) per coordinate (least squares):
  \(s = \mathrm{Cov}(f^{(1)}, f)/\mathrm{Var}(f)\), \(b = \mathbb E f^{(1)} - s\,\mathbb E f\), with \(f^{(1)}\) the
  total derivative along the trajectory (second-order differences on the knots).

The multistep predictor--corrector (the authors' reference loop): at each grid point the model is evaluated once;
the corrector (order = the previous predictor order, ``+1`` with ``c_pseudo``) recomputes the current state from the
previous one with the new evaluation as an extra node, keeping \(f\) (i.e. \(\sigma\epsilon - l x\)) fixed; it only
acts when its order exceeds 1; ``half=True`` applies it only at the noisier points (\(\lambda < \lambda_{1/2}\), the
half log-SNR of the DDPM schedule at \(t = 0.5\), where the paper's "half" rule ``t > 0.5`` lies). The predictor uses
orders ``1, 2, ..., order`` (warm-up), capped by the steps left with ``lower_order_final``.

Usage::

    python -m benchmarks.candidates.dpm_solver_v3            # writes benchmarks/results/candidates_dpm_solver_v3.md
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks.accuracy.problems import (
    denoise,
    make_problem,
    reference,
    start_states,
    time_key,
    train_network,
    vp_discrete_schedule,
)
from sde_diffusion.grids import make_grid
from sde_diffusion.sample import sample
from sde_diffusion.studies.metrics import rms_error
from sde_diffusion.studies.specs import parse_solver_spec

ROOT = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------------------------------------------------
# empirical model statistics
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class EMS:
    """EMS on increasing knots ``lam`` ``(K+1,)``: ``l, s, b`` of shape ``(K+1, D)`` (float64), piecewise linear in
    lambda between the knots; ``cost`` records how they were estimated."""

    lam: torch.Tensor
    l: torch.Tensor
    s: torch.Tensor
    b: torch.Tensor
    cost: dict = field(default_factory=dict)
    #: coefficient integrals already computed, by ``(a, c, m)`` (see :func:`integrals`)
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def constant(cls, lam: torch.Tensor, dim: int, l: float, s: float, b: float = 0.0) -> EMS:
        """Constant statistics (``l=1, s=0``: DPM-Solver++; ``l=0, s=-1``: DPM-Solver)."""
        ones = torch.ones(lam.shape[0], dim, dtype=torch.float64)
        return cls(lam.double(), l * ones, s * ones, b * ones, {"kind": f"constant l={l} s={s} b={b}"})

    def at(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(l, s, b)`` at the lambdas ``q`` ``(Q,)`` by linear interpolation (held constant outside the knots)."""
        k = self.lam.shape[0] - 1
        idx = torch.searchsorted(self.lam, q).clamp(1, k)
        lo, hi = self.lam[idx - 1], self.lam[idx]
        w = ((q - lo) / (hi - lo)).clamp(0.0, 1.0)[:, None]
        return tuple(v[idx - 1] + w * (v[idx] - v[idx - 1]) for v in (self.l, self.s, self.b))  # type: ignore[return-value]


def knots(schedule, t_start: float, t_end: float, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``k + 1`` lambda-uniform knots from ``t_start`` to ``t_end`` and their times (end points exact)."""
    lam0 = float(schedule.lambda_(torch.tensor(t_start, dtype=torch.float64)))
    lam1 = float(schedule.lambda_(torch.tensor(t_end, dtype=torch.float64)))
    lam = torch.linspace(lam0, lam1, k + 1, dtype=torch.float64)
    ts = schedule.inverse_lambda(lam).double()
    ts[0], ts[-1] = t_start, t_end
    return lam, ts


def probe_vectors(bsz: int, dim: int, probes: int, gen: torch.Generator) -> torch.Tensor:
    """``(reps * bsz, dim)`` directions: every axis for every sample (``probes = 0``) or ``probes`` Rademacher
    vectors per sample. The same directions serve every knot (common random numbers), so that the estimate of
    ``l`` is smooth in lambda and its finite differences in ``df/dlambda`` stay small."""
    if probes == 0:
        return torch.eye(dim, dtype=torch.float64).repeat_interleave(bsz, 0)
    return (torch.randint(0, 2, (probes * bsz, dim), generator=gen) * 2 - 1).to(torch.float64)


def jacobian_diagonal(model, x: torch.Tensor, t: float, v: torch.Tensor, probes: int) -> torch.Tensor:
    r"""Per sample, the diagonal of \(\nabla_x(\sigma\epsilon_\theta)\) at ``(x, t)`` ``(B, D)`` from central
    differences along the directions ``v`` (:func:`probe_vectors` with ``probes``): exact up to \(O(\delta^2)\)
    along the axes (``2D`` evaluations per sample), else the Rademacher estimate
    \(\frac1P\sum_p v_p \odot J v_p\) (``2P``)."""
    bsz, dim = x.shape
    sch = model.schedule
    tt = torch.tensor(t, dtype=torch.float64)
    sigma = float(sch.sigma(tt))
    delta = 1e-5 * max(1.0, float(x.abs().mean()))
    reps = v.shape[0] // bsz
    xx = x.repeat(reps, 1)
    xin = torch.cat([xx + delta * v, xx - delta * v])
    out = model.predict(xin, torch.full((xin.shape[0],), t, dtype=x.dtype), "eps")
    jv = sigma * (out[: xx.shape[0]] - out[xx.shape[0] :]) / (2 * delta)  # (reps*B, D): J v
    return (v * jv).reshape(reps, bsz, dim).sum(0) / (1 if probes == 0 else probes)


def estimate_ems(
    model, x_T: torch.Tensor, t_start: float, t_end: float, k: int = 1000, probes: int | None = None
) -> EMS:
    """EMS from the pilot batch ``x_T`` (module docstring): trajectories by the solver below with ``l=1, s=b=0``
    (DPM-Solver++(3M), exact weights) on the ``k``-step knot grid, then ``l`` from the Jacobian diagonal (``probes``:
    0 = along every axis, ``P`` = Rademacher estimator; default: axes up to 8 dimensions, else 4 probes), then
    ``s, b`` by per-coordinate least squares of ``df/dlambda`` on ``f``. Every network evaluation is counted."""
    t0 = time.perf_counter()
    sch = model.schedule
    shape = x_T.shape
    x_T = x_T.reshape(shape[0], -1).double()
    dim = x_T.shape[1]
    if probes is None:
        probes = 0 if dim <= 8 else 4
    lam, ts = knots(sch, t_start, t_end, k)
    deg = EMS.constant(lam, dim, 1.0, 0.0)
    xs, eps = v3_sample(model, x_T, ts, deg, order=3, corrector=False, lower_order_final=False, trajectory=True)
    alpha, sigma = sch.alpha(ts).double(), sch.sigma(ts).double()
    v = probe_vectors(x_T.shape[0], dim, probes, torch.Generator().manual_seed(12345))
    ls = torch.stack([jacobian_diagonal(model, xs[i], float(ts[i]), v, probes).mean(0) for i in range(k + 1)])
    f = (sigma[:, None, None] * eps - ls[:, None, :] * xs) / alpha[:, None, None]  # (K+1, B, D)
    df = torch.gradient(f, spacing=(lam,), dim=0, edge_order=2)[0]
    fm, dfm = f.mean(1), df.mean(1)
    cov = ((f - fm[:, None]) * (df - dfm[:, None])).mean(1)
    var = ((f - fm[:, None]) ** 2).mean(1)
    tiny = 1e-12 * (f * f).mean(1) + 1e-300
    s = cov / (var + tiny)
    b = dfm - s * fm
    n = shape[0]
    per_sample = (k + 1) * (1 + 2 * (dim if probes == 0 else probes))
    cost = {
        "pilot": n,
        "knots": k + 1,
        "evaluations_per_sample": per_sample,
        "evaluations": n * per_sample,
        "trajectory_nfe": k + 1,
        "jacobian": "axis central differences" if probes == 0 else f"Rademacher, {probes} probes",
        "seconds": time.perf_counter() - t0,
    }
    return EMS(lam, ls, s, b, cost)


# ---------------------------------------------------------------------------------------------------------------------
# coefficient integrals (float64, before the loop)
# ---------------------------------------------------------------------------------------------------------------------


def fine_nodes(lam_knots: torch.Tensor, a: float, c: float, m: int) -> torch.Tensor:
    """Nodes from ``a`` to ``c`` (either direction): the EMS knots strictly between them, each piece cut into ``m``."""
    lo, hi = min(a, c), max(a, c)
    inner = lam_knots[(lam_knots > lo) & (lam_knots < hi)]
    pts = torch.cat([torch.tensor([lo], dtype=torch.float64), inner, torch.tensor([hi], dtype=torch.float64)])
    u = torch.arange(m, dtype=torch.float64) / m
    fine = torch.cat([(pts[:-1, None] + (pts[1:] - pts[:-1])[:, None] * u).flatten(), pts[-1:]])
    return fine if a <= c else fine.flip(0)


def _integrals_once(ems: EMS, a: float, c: float, moments: int, m: int) -> dict:
    nodes = fine_nodes(ems.lam, a, c, m)
    l, s, b = ems.at(nodes)
    d = (nodes[1:] - nodes[:-1])[:, None]

    def cum(v):
        return torch.cat([torch.zeros_like(v[:1]), torch.cumsum(0.5 * d * (v[1:] + v[:-1]), 0)])

    d_l, d_s = cum(l), cum(s)
    e = torch.exp(d_l + d_s)
    bt = cum(torch.exp(-d_s) * b)
    u = (nodes - a)[:, None]
    mom = torch.stack([cum(e * u**j / math.factorial(j))[-1] for j in range(moments)])
    return {"dL": d_l[-1], "dS": d_s[-1], "Bt": bt[-1], "I": mom, "C": cum(e * bt)[-1]}


def integrals(ems: EMS, a: float, c: float, moments: int, m: int = 4) -> dict:
    r"""From anchor \(\lambda_a\) to \(\lambda_c\): \(L_c - L_a\), \(S_c - S_a\), \(\tilde B_a(\lambda_c)\),
    \(I_0 .. I_{moments-1}\) and \(C\) (module docstring): trapezoid with ``m``, ``2m`` and ``4m`` pieces per knot
    interval and two Richardson (Romberg) extrapolations, error \(O(h^6)\)."""
    if a == c:
        z = torch.zeros(ems.l.shape[1], dtype=torch.float64)
        return {"dL": z, "dS": z, "Bt": z, "I": torch.zeros(moments, z.shape[0], dtype=torch.float64), "C": z}
    hit = ems.cache.get((a, c, m))
    if hit is None or hit["I"].shape[0] < moments:
        t1, t2, t4 = (_integrals_once(ems, a, c, moments, q * m) for q in (1, 2, 4))
        hit = {key: (64 * t4[key] - 20 * t2[key] + t1[key]) / 45 for key in t1}
        ems.cache[(a, c, m)] = hit
    return {**hit, "I": hit["I"][:moments]}


def node_weights(lams: list[float], mom: torch.Tensor, pseudo: bool) -> list[torch.Tensor]:
    r"""Weights \(\omega_j\) (each ``(D,)``) with \(\sum_k g^{(k)} I_k = \sum_j \omega_j g_j\) for the nodes
    ``lams`` (``lams[0]`` the anchor): Taylor coefficients of the interpolating polynomial (or, ``pseudo``, the
    divided differences) times the moments ``mom`` ``(n+1, D)``."""
    n = len(lams) - 1
    a = lams[0]
    w = [mom[0].clone()] + [torch.zeros_like(mom[0]) for _ in range(n)]
    if n == 0:
        return w
    if pseudo:
        for k in range(1, n + 1):
            for j in range(k + 1):
                den = math.prod(lams[j] - lams[i] for i in range(k + 1) if i != j)
                w[j] = w[j] + math.factorial(k) * mom[k] / den
        return w
    vand = torch.tensor([[(lams[j] - a) ** k for k in range(1, n + 1)] for j in range(1, n + 1)], dtype=torch.float64)
    inv = torch.linalg.inv(vand)  # c_k = sum_j inv[k-1, j-1] (g_j - g_0)
    for j in range(1, n + 1):
        wj = sum(math.factorial(k) * inv[k - 1, j - 1] * mom[k] for k in range(1, n + 1))
        w[j] = w[j] + wj
        w[0] = w[0] - wj
    return w


@dataclass
class Update:
    r"""One update \(x_b = c_x \odot x_a + \sum_j W_j \odot f_j + \mathrm{const}\) (float64 ``(D,)`` vectors);
    ``nodes`` are the grid indices of the ``f_j``."""

    cx: torch.Tensor
    nodes: list[int]
    w: list[torch.Tensor]
    const: torch.Tensor


def make_update(ems: EMS, lam: torch.Tensor, alpha: torch.Tensor, ia: int, ib: int, nodes: list[int], pseudo: bool):
    """The update from grid point ``ia`` to ``ib`` with the model outputs at ``nodes`` (``nodes[0] == ia``)."""
    a, b = float(lam[ia]), float(lam[ib])
    main = integrals(ems, a, b, len(nodes))
    lams = [float(lam[j]) for j in nodes]
    omega = node_weights(lams, main["I"], pseudo)
    scale = alpha[ib] * torch.exp(-main["dL"])
    w, const = [], -main["C"].clone()
    for j, om in zip(nodes, omega):
        rel = main if j == ib else integrals(ems, a, float(lam[j]), 1)
        # g_j = exp(-dS_j) f_j - Bt_j
        w.append(-scale * om * torch.exp(-rel["dS"]))
        const = const + om * rel["Bt"]
    return Update(scale / alpha[ia], list(nodes), w, scale * const)


# ---------------------------------------------------------------------------------------------------------------------
# the sampler
# ---------------------------------------------------------------------------------------------------------------------

#: half log-SNR of the DDPM (vp-discrete) schedule at t = 0.5: the "half" corrector acts below it
LAMBDA_HALF = float(vp_discrete_schedule().lambda_(torch.tensor(0.5, dtype=torch.float64)))


def plan(
    ems: EMS,
    lam: torch.Tensor,
    alpha: torch.Tensor,
    order: int,
    corrector: bool,
    p_pseudo: bool,
    c_pseudo: bool,
    lower_order_final: bool,
    half: bool,
):
    """Per step ``i`` (grid point ``i`` -> ``i + 1``): the corrector update of point ``i`` (or ``None``) and the
    predictor update."""
    n = lam.shape[0] - 1
    steps, p_prev = [], 0
    for i in range(n):
        corr = None
        c_order = p_prev + int(c_pseudo)
        if corrector and c_order > 1 and (not half or float(lam[i]) < LAMBDA_HALF):
            nodes = [i - 1, i] + [i - 1 - j for j in range(1, c_order - 1)]
            corr = make_update(ems, lam, alpha, i - 1, i, nodes, c_pseudo)
        p = min(order, i + 1)
        if lower_order_final:
            p = min(p, n - i)
        pred = make_update(ems, lam, alpha, i, i + 1, [i - j for j in range(p)], p_pseudo)
        steps.append((corr, pred))
        p_prev = p
    return steps


def v3_sample(
    model,
    x_T: torch.Tensor,
    ts: torch.Tensor,
    ems: EMS,
    order: int = 3,
    corrector: bool = True,
    p_pseudo: bool = False,
    c_pseudo: bool = False,
    lower_order_final: bool = True,
    half: bool = False,
    trajectory: bool = False,
    steps_plan=None,
):
    """Integrate the PF-ODE over the grid ``ts`` (decreasing times) with DPM-Solver-v3 (module docstring); one model
    evaluation per grid point except the last (NFE = steps). ``trajectory=True`` also evaluates the last point and
    returns ``(states, eps)`` of shape ``(steps+1, B, D)``."""
    sch = model.schedule
    shape = x_T.shape
    x = x_T.reshape(shape[0], -1)
    ts = ts.double()
    lam, alpha, sigma = sch.lambda_(ts).double(), sch.alpha(ts).double(), sch.sigma(ts).double()
    if steps_plan is None:
        steps_plan = plan(ems, lam, alpha, order, corrector, p_pseudo, c_pseudo, lower_order_final, half)
    l_nodes = ems.at(lam)[0]
    fs: dict[int, torch.Tensor] = {}
    xs = {0: x}
    keep_x, keep_eps = [], []
    for i, (corr, pred) in enumerate(steps_plan):
        t = torch.full((x.shape[0],), float(ts[i]), dtype=x.dtype)
        eps = model.predict(x.reshape(shape), t, "eps", float(alpha[i]), float(sigma[i])).reshape(x.shape)
        fs[i] = (float(sigma[i]) * eps - l_nodes[i] * x) / float(alpha[i])
        if trajectory:
            keep_x.append(x)
            keep_eps.append(eps)
        if corr is not None:
            x = apply(corr, xs[i - 1], fs)
            xs[i] = x
        x = apply(pred, x, fs)
        xs[i + 1] = x
        fs.pop(i - order - 1, None)
        xs.pop(i - 1, None)
    if trajectory:
        n = len(steps_plan)
        t = torch.full((x.shape[0],), float(ts[n]), dtype=x.dtype)
        keep_x.append(x)
        keep_eps.append(model.predict(x, t, "eps", float(alpha[n]), float(sigma[n])))
        return torch.stack(keep_x), torch.stack(keep_eps)
    return x.reshape(shape)


def apply(u: Update, x: torch.Tensor, fs: dict) -> torch.Tensor:
    out = u.cx * x + u.const
    for j, w in zip(u.nodes, u.w):
        out = out + w * fs[j]
    return out


# ---------------------------------------------------------------------------------------------------------------------
# evaluation on the accuracy benchmark
# ---------------------------------------------------------------------------------------------------------------------

UNITS = (("gmm64", "vp-discrete"), ("gmm64", "edm"), ("ring", "vp-discrete"), ("ring", "edm"), ("ring-net", "edm"))
BATCH = {"ring": 256, "gmm64": 64, "ring-net": 128}
PILOT = {"ring": 256, "gmm64": 256, "ring-net": 256}
SENSITIVITY_SEEDS = (2001, 2002)  # further pilot batches: how much the result depends on the pilot draw
SELECT = {"ring": 128, "gmm64": 64, "ring-net": 64}
PILOT_SEED = 2000  # EMS; neither the evaluation seed (0) nor the calibration seed (1000)
SELECT_SEED = 3000  # held-out batch on which the v3 configuration is chosen
NFES = (5, 10, 20)
GRIDS = ("logsnr", "time_uniform", "time_quadratic", "karras", "vp_quadratic")  # the accuracy benchmark's grids


def paper_setting(steps: int) -> dict:
    """The authors' CIFAR-10 (score_sde) choices by step count: pseudo-order predictor and corrector at <= 5 steps,
    corrector with lower_order_final up to 8, predictor only above; order 3."""
    if steps <= 5:
        return dict(order=3, corrector=True, p_pseudo=True, lower_order_final=False)
    if steps <= 8:
        return dict(order=3, corrector=True, p_pseudo=False, lower_order_final=True)
    return dict(order=3, corrector=False, p_pseudo=False, lower_order_final=True)


VARIANTS = {
    "o2": dict(order=2, corrector=False),
    "o2+c": dict(order=2, corrector=True),
    "o3": dict(order=3, corrector=False),
    "o3+c": dict(order=3, corrector=True),
    "o3+c+cpseudo": dict(order=3, corrector=True, c_pseudo=True),
    "o3pseudo+c": dict(order=3, corrector=True, p_pseudo=True),
    "o3+c/half": dict(order=3, corrector=True, half=True),
}


def variants(steps: int) -> dict:
    return {"paper": paper_setting(steps), **VARIANTS}


def parse_accuracy_md(path: Path) -> dict:
    """From ``accuracy.md``: per ``(problem, schedule, output, nfe)`` the calibrated error and configuration, the best
    peer (error, label) and our best fixed configuration (spec, grid, error)."""
    cells: dict = {}
    text = path.read_text()
    sec1 = text.split("## Calibrated vs default vs best peer", 1)[1].split("\n## ", 1)[0]
    for line in sec1.splitlines():
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cols) < 14 or not cols[3].isdigit():
            continue
        key = (cols[0], cols[1], cols[2], int(cols[3]))
        peer = cols[7].split(" ", 1)
        cells[key] = {
            "calibrated_md": float(cols[4]),
            "calibrated_config": cols[5].replace("`", ""),
            "peer": float(peer[0]),
            "peer_label": peer[1].strip("()") if len(peer) > 1 else "",
        }
    sec2 = text.split("## Best of ours vs best of diffusers", 1)[1].split("\n## ", 1)[0]
    for line in sec2.splitlines():
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cols) < 5 or not cols[3].isdigit():
            continue
        key = (cols[0], cols[1], cols[2], int(cols[3]))
        m = re.match(r"`([^`]+)` @ (\S+): ([0-9.e+-]+)", cols[4])
        if m and key in cells:
            cells[key].update({"fixed_spec": m.group(1), "fixed_grid": m.group(2), "fixed_md": float(m.group(3))})
    return cells


def ours_fixed(problem, spec_text: str, grid: str, budget: int, x_T: torch.Tensor) -> torch.Tensor | None:
    spec = parse_solver_spec(spec_text)
    solver = spec.build()
    steps = solver.steps_for_nfe(budget)
    if steps == 0:
        return None
    return sample(problem.model(), x_T, solver=solver, steps=steps, grid=grid).x


def targets(problem, x: torch.Tensor, rtol: float) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """dopri5 reference state at ``t_min`` from ``x`` and its exact data prediction (the two outputs' targets)."""
    ref, info = reference(problem, x, [], rtol)
    state = ref[time_key(problem.t_end)]
    return state, denoise(problem, state, problem.t_end), info


def recalibrate(problem, x_T: torch.Tensor, net_dir: str) -> dict:
    """The benchmark's calibrated runs (its own settings and seeds) on this process's network: ``(output, nfe) ->
    (error, configuration)``."""
    from benchmarks.accuracy.configurations import Settings
    from benchmarks.accuracy.runners import run_calibrated

    settings = Settings(net_dir=net_dir)
    ref, _ = reference(problem, x_T, [], settings.rtol)
    out = {}
    for nfe in NFES:
        for r in run_calibrated(problem, x_T, ref, settings, nfe):
            out[(r["output"], r["nfe_budget"])] = (r["error"], f"{r['config']} @ {r['calibrated_grid']}")
    return out


def run_unit(name: str, schedule: str, cells: dict, net_dir: str, k: int, log) -> dict:
    """EMS on the pilot batch, every v3 configuration x grid x budget on the held-out selection batch and on the
    evaluation batch, the best fixed configuration of ``accuracy.md`` rerun (and, for the learned problem, whose
    network is retrained here, the calibration rerun). Returns one summary row per cell."""
    t0 = time.perf_counter()
    problem = make_problem(name, schedule, net_dir)
    batches = {
        "eval": start_states(problem, BATCH[name], 0),
        "select": start_states(problem, SELECT[name], SELECT_SEED),
    }
    tgt, ref_seconds = {}, 0.0
    for key, x in batches.items():
        s, x0, info = targets(problem, x, 1e-10)
        tgt[key] = {"state": s, "x0": x0}
        ref_seconds += info["seconds"]
    log(f"{name}/{schedule}: references {ref_seconds:.1f} s")
    pilot = start_states(problem, PILOT[name], PILOT_SEED)
    ems = estimate_ems(problem.model(), pilot, problem.t_start, problem.t_end, k=k)
    log(f"{name}/{schedule}: EMS {ems.cost['seconds']:.1f} s")
    deg = EMS.constant(ems.lam, batches["eval"][0].numel(), 1.0, 0.0)
    learned = name == "ring-net"
    recal = {}
    if learned:
        tc = time.perf_counter()
        recal = recalibrate(problem, batches["eval"], net_dir)
        log(f"{name}/{schedule}: calibration rerun {time.perf_counter() - tc:.1f} s")

    def error(x, output, batch):
        if x is None or not bool(torch.isfinite(x).all()):
            return None
        if output == "x0":
            x = denoise(problem, x, problem.t_end)
        return rms_error(x, tgt[batch][output])

    # every (statistics, variant, grid, budget) on both batches: errors[(stats, variant, grid, budget, batch, output)]
    errors: dict = {}
    budgets = sorted({b for n in NFES for b in (n, n - 1)})
    tv = time.perf_counter()
    for budget in budgets:
        for grid in GRIDS:
            ts = make_grid(problem.schedule, grid, budget)
            lam = problem.schedule.lambda_(ts).double()
            alpha = problem.schedule.alpha(ts).double()
            for stats_name, stats in (("ems", ems), ("l=1", deg)):
                for vname, opts in variants(budget).items():
                    full = {"order": 3, "corrector": True, "p_pseudo": False, "c_pseudo": False}
                    full.update({"lower_order_final": True, "half": False, **opts})
                    steps_plan = plan(stats, lam, alpha, **full)
                    for batch, x in batches.items():
                        y = v3_sample(problem.model(), x, ts, stats, steps_plan=steps_plan)
                        for output in ("state", "x0"):
                            errors[(stats_name, vname, grid, budget, batch, output)] = error(y, output, batch)
    log(f"{name}/{schedule}: v3 runs {time.perf_counter() - tv:.1f} s")

    rows = []
    for nfe in NFES:
        for output in ("state", "x0"):
            cell = dict(cells.get((name, schedule, output, nfe), {}))
            budget = nfe if output == "state" else nfe - 1
            row = {"problem": name, "schedule": schedule, "output": output, "nfe": nfe}
            fixed = None
            if cell.get("fixed_spec"):
                fixed = error(
                    ours_fixed(problem, cell["fixed_spec"], cell["fixed_grid"], budget, batches["eval"]), output, "eval"
                )
            row.update({k2: cell.get(k2) for k2 in ("calibrated_md", "calibrated_config", "peer", "peer_label")})
            row.update({"fixed_spec": cell.get("fixed_spec"), "fixed_grid": cell.get("fixed_grid")})
            row.update({"fixed_md": cell.get("fixed_md"), "fixed_rerun": fixed})
            if learned:
                row["calibrated_rerun"], row["calibrated_rerun_config"] = recal.get((output, nfe), (None, None))
            row["v3_paper_logsnr"] = errors[("ems", "paper", "logsnr", budget, "eval", output)]
            if cell.get("fixed_grid") in GRIDS:
                row["v3_paper_fixed_grid"] = errors[("ems", "paper", cell["fixed_grid"], budget, "eval", output)]
            for stats_name in ("ems", "l=1"):
                cands = [
                    (errors[(stats_name, v, g, budget, "select", output)], v, g)
                    for v in variants(budget)
                    for g in GRIDS
                    if errors[(stats_name, v, g, budget, "select", output)] is not None
                ]
                sel_err, v, g = min(cands)
                tag = "v3_selected" if stats_name == "ems" else "l1_selected"
                row[tag] = errors[(stats_name, v, g, budget, "eval", output)]
                row[tag + "_config"] = f"{v} @ {g}"
                row[tag + "_select_error"] = sel_err
            best = min(
                (errors[("ems", v, g, budget, "eval", output)], v, g)
                for v in variants(budget)
                for g in GRIDS
                if errors[("ems", v, g, budget, "eval", output)] is not None
            )
            row["v3_oracle"], row["v3_oracle_config"] = best[0], f"{best[1]} @ {best[2]}"
            rows.append(row)
    # the same paper-setting runs with EMS from other pilot batches of the same size
    sens = []
    for seed in (PILOT_SEED, *SENSITIVITY_SEEDS):
        other = ems if seed == PILOT_SEED else None
        if other is None:
            other = estimate_ems(
                problem.model(), start_states(problem, PILOT[name], seed), problem.t_start, problem.t_end, k=k
            )
        for nfe in NFES:
            cell = cells.get((name, schedule, "state", nfe), {})
            for grid in dict.fromkeys(["logsnr", cell.get("fixed_grid", "logsnr")]):
                if grid not in GRIDS:
                    continue
                ts = make_grid(problem.schedule, grid, nfe)
                y = v3_sample(problem.model(), batches["eval"], ts, other, **paper_setting(nfe))
                sens.append(
                    {
                        "problem": name,
                        "schedule": schedule,
                        "seed": seed,
                        "nfe": nfe,
                        "grid": grid,
                        "error": error(y, "state", "eval"),
                    }
                )
    cost = dict(ems.cost)
    cost["reference_seconds"] = ref_seconds
    cost["unit_seconds"] = time.perf_counter() - t0
    return {"rows": rows, "ems_cost": cost, "sensitivity": sens}


def fmt(v) -> str:
    return "-" if v is None else f"{v:.2e}"


def ours_best(row: dict) -> float | None:
    """min(calibrated, best fixed rerun) on the same network (the learned problem: the calibration rerun)."""
    cal = row.get("calibrated_rerun") if row["problem"] == "ring-net" else row.get("calibrated_md")
    vals = [v for v in (cal, row.get("fixed_rerun")) if v is not None]
    return min(vals) if vals else None


def summarise(result: dict) -> str:
    rows = result["rows"]
    lines = [
        "# Candidate: DPM-Solver-v3 with empirical model statistics (issue 14)",
        "",
        f"Command: `{result['command']}` -- {result['seconds']:.0f} s, one thread, torch {torch.__version__}.",
        "",
        "DPM-Solver-v3 (Zheng et al., arXiv:2310.13268), written from the paper's equations "
        "(`benchmarks/candidates/dpm_solver_v3.py`; its module docstring states the maths). Same problems, "
        "evaluation batches (seed 0), dopri5 references (rtol 1e-10) and outputs as `accuracy.md`. The EMS are "
        f"estimated once per problem on a pilot batch (seed {PILOT_SEED}) along trajectories of a "
        f"{result['knots'] - 1}-step solve on lambda-uniform knots.",
        "",
        "Columns:",
        "",
        "- **calibrated**: `accuracy.md` (analytic problems); for `ring-net` the benchmark's own calibration "
        "(`run_calibrated`, same settings and seeds) rerun here, because the network is retrained in this process "
        "and `train_network` is not reproducible run to run (two trainings here differ by up to 1.5 in a weight); "
        "for the same reason `ring-net`'s best peer from `accuracy.md` is for another network (shown in brackets).",
        "- **best fixed (rerun)**: our best fixed configuration of that cell in `accuracy.md` (chosen there on the "
        "evaluation batch itself), rerun here on the same batch.",
        "- **v3 paper @ logsnr**: the authors' settings by step count (order 3; <= 5 steps: pseudo-order predictor "
        "+ corrector, no lower_order_final; 6-8: corrector; > 8: predictor only) on the paper's logSNR-uniform grid.",
        "- **v3 selected**: the v3 configuration (paper setting or one of the variants: order 2/3, corrector, "
        "pseudo-order predictor/corrector, half corrector) x grid (the benchmark's five named grids) with the "
        f"smallest error on a held-out batch (seed {SELECT_SEED}, its own dopri5 reference), then run on the "
        "evaluation batch -- the analogue of calibration.",
        "- **same search, l=1 s=b=0**: the same selection with the EMS switched off (DPM-Solver++ / UniPC-like): "
        "what the EMS themselves add.",
        "- **v3 oracle**: the best v3 run on the evaluation batch itself (optimistic; for context only).",
        "- **ratio** = v3 selected / min(calibrated, best fixed rerun); < 1: v3 wins.",
        "",
        "## EMS cost (one-off per model, like calibration)",
        "",
        "| problem | schedule | pilot samples | knots | model evaluations per pilot sample | Jacobian diagonal "
        "| seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, c in result["ems_cost"].items():
        p, s = key.split("/")
        lines.append(
            f"| {p} | {s} | {c['pilot']} | {c['knots']} | {c['evaluations_per_sample']} | {c['jacobian']} "
            f"| {c['seconds']:.1f} |"
        )
    lines += [
        "",
        "## Errors (RMS over the evaluation batch)",
        "",
        "| problem | schedule | output | NFE | calibrated | best fixed (rerun) | best peer | v3 paper @ logsnr "
        "| v3 selected (configuration) | same search, l=1 s=b=0 | v3 oracle | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdict = []
    for r in rows:
        learned = r["problem"] == "ring-net"
        cal = r.get("calibrated_rerun") if learned else r.get("calibrated_md")
        peer = f"({fmt(r['peer'])})" if learned else fmt(r["peer"])
        ob = ours_best(r)
        ratio = r["v3_selected"] / ob if ob and r["v3_selected"] is not None else None
        r["ratio"] = ratio
        lines.append(
            f"| {r['problem']} | {r['schedule']} | {r['output']} | {r['nfe']} | {fmt(cal)} | {fmt(r['fixed_rerun'])} "
            f"| {peer} | {fmt(r['v3_paper_logsnr'])} | {fmt(r['v3_selected'])} (`{r['v3_selected_config']}`) "
            f"| {fmt(r['l1_selected'])} | {fmt(r['v3_oracle'])} | {'-' if ratio is None else f'{ratio:.2f}'} |"
        )
        verdict.append(r)
    lines += [
        "",
        "## Dependence on the pilot batch",
        "",
        f"v3 with the paper's settings (`state` output, evaluation batch) with EMS from pilot batches of the same size "
        f"and seeds {', '.join(str(x) for x in (PILOT_SEED, *SENSITIVITY_SEEDS))}; grids: logsnr and the cell's best "
        "fixed grid.",
        "",
        "| problem | schedule | NFE | grid | "
        + " | ".join(f"seed {x}" for x in (PILOT_SEED, *SENSITIVITY_SEEDS))
        + " |",
        "|---|---|---|---|" + "---|" * (1 + len(SENSITIVITY_SEEDS)),
    ]
    groups: dict = {}
    for e in result["sensitivity"]:
        groups.setdefault((e["problem"], e["schedule"], e["nfe"], e["grid"]), {})[e["seed"]] = e["error"]
    for (p, s, n, g), by_seed in groups.items():
        vals = " | ".join(fmt(by_seed.get(x)) for x in (PILOT_SEED, *SENSITIVITY_SEEDS))
        lines.append(f"| {p} | {s} | {n} | {g} | {vals} |")
    low = [r for r in verdict if r["nfe"] <= 10]
    wins = [r for r in low if r["ratio"] is not None and r["ratio"] < 1]
    ems_helps = [
        r for r in low if r["v3_selected"] is not None and r["l1_selected"] and r["v3_selected"] < r["l1_selected"]
    ]
    paper_wins = [
        r for r in low if r["v3_paper_logsnr"] is not None and ours_best(r) and r["v3_paper_logsnr"] < ours_best(r)
    ]
    lines += [
        "",
        "## Verdict (NFE <= 10)",
        "",
        f"- v3 selected on the held-out batch beats min(calibrated, best fixed) in **{len(wins)} of {len(low)}** cells"
        + (
            ": "
            + "; ".join(f"{r['problem']}/{r['schedule']}/{r['output']}/NFE {r['nfe']} ({r['ratio']:.2f})" for r in wins)
            if wins
            else ""
        )
        + ".",
        f"- v3 with the paper's settings on the logSNR grid beats it in {len(paper_wins)} of {len(low)} cells"
        + (
            ": " + "; ".join(f"{r['problem']}/{r['schedule']}/{r['output']}/NFE {r['nfe']}" for r in paper_wins)
            if paper_wins
            else ""
        )
        + ".",
        f"- the EMS improve on the same search with l=1, s=b=0 in {len(ems_helps)} of {len(low)} cells.",
        "",
        "Caveats: every win above is at NFE 5 or on `ring-net`; on `ring` v3 loses in every cell. The selected "
        "configurations were chosen on 64-128 held-out samples and several v3 results move by up to 10x with the "
        "pilot draw (table above: on `gmm64` the same setting gives either ~1e-2 or ~1e-1, the RMS error being "
        "dominated by the few samples that end in another mixture component), so single-cell wins with a ratio near "
        "1 are within that spread. `ring-net` is one small network, retrained here; its calibrated numbers are "
        "rerun on it, its best fixed configuration was chosen in `accuracy.md` for another network.",
        "",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--accuracy-md", type=Path, default=ROOT / "benchmarks" / "results" / "accuracy.md")
    ap.add_argument("--networks", type=Path, default=Path("/tmp/dpm_solver_v3_networks"))
    ap.add_argument("--knots", type=int, default=1000, help="EMS knots - 1 (lambda-uniform)")
    ap.add_argument("--units", default=",".join(f"{p}/{s}" for p, s in UNITS))
    ap.add_argument("--report-only", action="store_true", help="rewrite the markdown from the stored JSON")
    args = ap.parse_args(argv)
    if args.report_only:
        result = json.loads((args.out / "candidates_dpm_solver_v3.json").read_text())
        (args.out / "candidates_dpm_solver_v3.md").write_text(summarise(result))
        return result
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    t0 = time.perf_counter()
    cells = parse_accuracy_md(args.accuracy_md)
    result: dict = {"rows": [], "ems_cost": {}, "sensitivity": [], "knots": args.knots + 1}
    for unit in args.units.split(","):
        name, schedule = unit.split("/")
        if name == "ring-net":
            tn = time.perf_counter()
            train_network(name, schedule, str(args.networks), 1500)
            result["train_seconds"] = time.perf_counter() - tn
        out = run_unit(name, schedule, cells, str(args.networks), args.knots, lambda m: print(m, file=sys.stderr))
        result["rows"] += out["rows"]
        result["sensitivity"] += out["sensitivity"]
        result["ems_cost"][unit] = out["ems_cost"]
    result["seconds"] = time.perf_counter() - t0
    result["command"] = "python -m benchmarks.candidates.dpm_solver_v3 " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    md = summarise(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "candidates_dpm_solver_v3.md").write_text(md)
    (args.out / "candidates_dpm_solver_v3.json").write_text(json.dumps(result, indent=1) + "\n")
    print(md)
    return result


if __name__ == "__main__":
    main()
