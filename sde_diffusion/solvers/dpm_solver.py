r"""DPM-Solver (noise prediction, Lu et al. 2022, arXiv:2206.00927) and DPM-Solver++ (data prediction,
Lu et al. 2022, arXiv:2211.01095): singlestep, multistep, the NFE-budgeted "fast" schedule and SDE-DPM-Solver++.

Every update of every method in this module has one shape. From a state \(x_a\) at \(\lambda_a\) to
\(\lambda_b = \lambda_a + h\) with model outputs \(m_j\) at nodes \(\lambda_a + r_j h\) (\(r_0 = 0\)):

* noise prediction (DPM-Solver): \(x_b = \frac{\alpha_b}{\alpha_a} x_a - \sigma_b \sum_j W_j \epsilon_j\),
* data prediction (DPM-Solver++): \(x_b = \frac{\sigma_b}{\sigma_a} x_a + \alpha_b \sum_j W_j x_{0,j}\),

with \(W_j \approx \int_0^h e^{s(h-u)} L_j(u)\, \mathrm{d}u\) (\(s = +1\) / \(-1\), \(L_j\) the Lagrange basis). How
\(W\) is formed is the *rule* ([`update_weights`][sde_diffusion.solvers.dpm_solver.update_weights]); every rule is built
from [`expint`][sde_diffusion.solvers.expint]
(``lagrange_weights``, ``phis``):

* ``"exact"`` -- the exponentially weighted Lagrange weights through all nodes (order = number of nodes);
* ``"phi2"`` -- first-order Taylor with the derivative from the *latest* node only:
  \(h \varphi_1 m_0 + h \varphi_2 (m_{\rm last} - m_0)/r_{\rm last}\) (= the exact rule on the nodes
  \(\{0, r_{\rm last}\}\));
* ``"mid"`` -- the same with \(h \varphi_2\) replaced by \(h \varphi_1 / 2\) (DPM-Solver-2's \((e^h - 1)/(2 r_1)\) form,
  DPM-Solver++(2S)/(2M), diffusers' ``solver_type="midpoint"``);
* ``"ref3"`` -- the multistep third-order form of the reference implementation and of diffusers
  (\(h \varphi_1 m_0 + h \varphi_2 D_1 + h \varphi_3 D_2\), divided differences \(D\)); the exact quadratic has
  \(2 h \varphi_3 D_2\), so this rule has a local error \(O(h^3)\) and the method is *second* order (see
  [`DPMSolver`][sde_diffusion.solvers.dpm_solver.DPMSolver]).

The ``update`` option picks the rules (table in ``docs/theory/dpm_solver.md``): ``"paper"`` (Lu et al.'s published
algorithms and reference code), ``"midpoint"`` / ``"heun"`` (diffusers' ``solver_type``), ``"exact"`` (exact
Lagrange weights everywhere; third order for 3M as well).

Stages of singlestep methods (``stages`` option):

* ``"lambda"`` (default, the paper): one grid interval is one step of order \(k\) with \(k\) model evaluations; the
  intermediate times are \(\lambda + r h\) with \(r = 1/2\) (order 2) or \(r = 1/3, 2/3\) (order 3).
* ``"grid"`` (diffusers' ``DPMSolverSinglestepScheduler``): a step of order \(k\) spans \(k\) grid intervals and
  the grid's own interior points are the stages; every grid interval costs one evaluation.
"""

from __future__ import annotations

import torch

from .._ops import time_like
from .base import Solver, host_scalars, lincomb, matrix_column, register, vector_column
from .expint import lagrange_weights, long_step_consistent, phis
from .options import check_bool, check_choice, check_int, check_int_sequence, check_nonnegative
from .warmup import step_orders

__all__ = [
    "DPMSolver",
    "DPMSolverPP",
    "SDEDPMSolverPP",
    "DPMSolverFast",
    "UPDATES",
    "multistep_update",
    "update_weights",
    "update_rule",
    "combination",
    "grid_groups",
    "fast_orders",
    "STAGE_NODES",
    "run_singlestep_stages",
    "final_update",
    "singlestep_table",
]

#: values of the ``update`` option (which rule each update of a method uses:
#: [`update_rule`][sde_diffusion.solvers.dpm_solver.update_rule])
UPDATES = ("paper", "midpoint", "heun", "exact")
#: stage nodes ``r_j`` (fractions of the step in lambda) of the singlestep methods of the paper
STAGE_NODES = {1: (0.0,), 2: (0.0, 0.5), 3: (0.0, 1.0 / 3.0, 2.0 / 3.0)}


# ---------------------------------------------------------------------------------------------------------------------
# weights of one update
# ---------------------------------------------------------------------------------------------------------------------


def update_weights(r: torch.Tensor, h: torch.Tensor, sign: int, rule: str) -> torch.Tensor:
    r"""Weights ``W_j`` of one exponential-integrator update (float64).

    Args:
        r: nodes in units of the step, shape ``(..., m)``, ``r[..., 0] = 0`` the update's starting point,
            ``r[..., -1]`` the latest evaluation (``> 0`` for stages, ``< 0`` for past points).
        h: the step in lambda, shape ``(...)``.
        sign: ``+1`` noise prediction, ``-1`` data prediction.
        rule: ``"exact"``, ``"phi2"``, ``"mid"`` or ``"ref3"`` (module docstring).

    With one node every rule is \(h \varphi_1(s h)\) = \(\operatorname{expm1}(h)\) (eps) or
    \(-\operatorname{expm1}(-h)\) (x0).
    """
    r = torch.as_tensor(r, dtype=torch.float64)
    h = torch.as_tensor(h, dtype=torch.float64)
    m = r.shape[-1]
    if m == 1 or rule == "exact":
        return lagrange_weights(r, h, sign)
    if rule == "phi2":
        pair = lagrange_weights(torch.stack([r[..., 0], r[..., -1]], -1), h, sign)
        w = torch.zeros(r.shape, dtype=torch.float64)
        w[..., 0], w[..., -1] = pair[..., 0], pair[..., 1]
        return w
    if rule == "mid":
        w1 = lagrange_weights(r[..., :1], h, sign)[..., 0]
        last = w1 / (2.0 * r[..., -1])
        w = torch.zeros(r.shape, dtype=torch.float64)
        w[..., 0], w[..., -1] = w1 - last, last
        return w
    if rule == "ref3":
        if m != 3:
            raise ValueError("rule 'ref3' needs exactly three nodes")
        ra, rb = r[..., 1], r[..., 2]
        one, zero = torch.ones_like(ra), torch.zeros_like(ra)
        # divided differences as coefficient vectors on (m_0, m_a, m_b):
        d10 = torch.stack([-one / ra, one / ra, zero], -1)  # (m_a - m_0)/r_a
        d11 = torch.stack([zero, one / (ra - rb), -one / (ra - rb)], -1)  # (m_a - m_b)/(r_a - r_b)
        d1 = d10 + (ra / rb)[..., None] * (d10 - d11)
        d2 = (d10 - d11) / (-rb)[..., None]
        p1, p2, p3 = phis(sign * h, 3)
        e0 = torch.stack([one, zero, zero], -1)
        return h[..., None] * (p1[..., None] * e0 + p2[..., None] * d1 + p3[..., None] * d2)
    raise ValueError(f"unknown rule {rule!r}")


def update_rule(update: str, multistep: bool, nodes: int, final: bool = True) -> str:
    """Which rule an update with ``nodes`` model outputs uses under the ``update`` option.

    ``final`` distinguishes the last update of a singlestep step from an intermediate stage (only the third-order
    singlestep method has a two-node stage; there ``"paper"`` uses ``phi2`` and ``"midpoint"`` uses ``mid``).
    """
    if nodes == 1 or update == "exact":
        return "exact"
    if multistep:
        if nodes == 2:
            return "exact" if update == "heun" else "mid"
        return "ref3"
    if update == "heun":
        return "exact"
    if nodes == 3:
        return "phi2"
    if final:
        return "mid"
    return "phi2" if update == "paper" else "mid"


def _frame(sign: int, la_a, ls_a, la_b, ls_b, h, eta: float = 0.0):
    """``(ratio, scale)`` of ``x_b = ratio x_a + scale sum_j W_j m_j`` from log alpha / log sigma at both ends."""
    if sign > 0:
        return torch.exp(la_b - la_a), -torch.exp(ls_b)
    return torch.exp(ls_b - ls_a - eta * h), torch.exp(la_b)


def combination(
    sign: int,
    rule: str,
    lam_nodes: torch.Tensor,
    la_a: torch.Tensor,
    ls_a: torch.Tensor,
    la_b: torch.Tensor,
    ls_b: torch.Tensor,
    eta: float = 0.0,
):
    r"""Coefficients of one update \(x_b = \mathrm{ratio}\, x_a + \sum_j c_j m_j\) (float64, any batch shape ``(...)``).

    Args:
        lam_nodes: lambda of the model outputs, ``(..., m)``; ``lam_nodes[..., 0]`` is ``lambda_a``.
        la_a: ``log alpha`` at the start ``a`` (``ls_a``, ``la_b``, ``ls_b``: ``log sigma`` at ``a``, ``log alpha``
            and ``log sigma`` at the end ``b``).
        eta: data prediction only: the SDE-DPM-Solver++ family
            ([`SDEDPMSolverPP`][sde_diffusion.solvers.dpm_solver.SDEDPMSolverPP]), whose linear part decays
            like \(e^{-(1 + \eta) h}\): the weights are those of the step \((1 + \eta) h\) (same \(r\)) and
            \(\mathrm{ratio} = (\sigma_b/\sigma_a)\, e^{-\eta h}\).

    Returns ``(ratio, c)`` with ``c`` of shape ``(..., m)`` (the \(W_j\) times \(-\sigma_b\) or \(\alpha_b\)).
    """
    lam_a = la_a - ls_a
    h = (la_b - ls_b) - lam_a
    r = (lam_nodes - lam_a[..., None]) / h[..., None]
    w = update_weights(r, (1.0 + eta) * h, sign, rule)
    ratio, scale = _frame(sign, la_a, ls_a, la_b, ls_b, h, eta)
    c = scale[..., None] * w
    # every rule's weights sum to the one-node weight: make that sum exact in the frame's floats for long steps
    start, end = (torch.exp(ls_a), torch.exp(ls_b)) if sign > 0 else (torch.exp(la_a), torch.exp(la_b))
    c = long_step_consistent(c, h, ratio, start, end)
    return ratio, c


# ---------------------------------------------------------------------------------------------------------------------
# order schedules
# ---------------------------------------------------------------------------------------------------------------------


def grid_groups(order: int, steps: int, lower_order_final: bool = True) -> tuple[int, ...]:
    """Group sizes (= orders) of a singlestep method whose stages are grid points (``stages="grid"``), as in
    diffusers' ``DPMSolverSinglestepScheduler.get_order_list``: without ``lower_order_final`` ``steps`` must be a
    multiple of ``order`` (``[order] * (steps // order)``); with it, the DPM-Solver-fast allocation of
    [`fast_orders`][sde_diffusion.solvers.dpm_solver.fast_orders] is used on the fixed grid (order 2, even ``steps``:
    ``[2, ..., 2, 1, 1]``)."""
    if not lower_order_final:
        if steps % order:
            raise ValueError(
                f"stages='grid' without lower_order_final needs steps divisible by order={order}, got {steps}"
            )
        return (order,) * (steps // order)
    if order == 2 and steps % 2 == 0:
        return (2,) * (steps // 2 - 1) + (1, 1)
    return fast_orders(steps, order)


def fast_orders(nfe: int, order: int = 3) -> tuple[int, ...]:
    """DPM-Solver-fast (arXiv:2206.00927, sec. 3.4): orders of the ``K`` outer steps spending exactly ``nfe``
    evaluations. Order 3: ``K = nfe // 3 + 1`` and ``[3]*(K-2) + [2, 1]`` (``nfe % 3 == 0``), ``[3]*(K-1) + [1]``
    (``== 1``), ``[3]*(K-1) + [2]`` (``== 2``). Order 2: ``[2]*(nfe//2)`` plus ``[1]`` if ``nfe`` is odd.
    Order 1: ``[1]*nfe``."""
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be a positive int, got {nfe!r}")
    if order == 3:
        k = nfe // 3 + 1
        rem = nfe % 3
        if rem == 0:
            return (3,) * (k - 2) + (2, 1)
        return (3,) * (k - 1) + ((1,) if rem == 1 else (2,))
    if order == 2:
        return (2,) * (nfe // 2) + ((1,) if nfe % 2 else ())
    if order == 1:
        return (1,) * nfe
    raise ValueError(f"order must be 1, 2 or 3, got {order!r}")


# ---------------------------------------------------------------------------------------------------------------------
# coefficient tables (float64, host, vectorised over the grid)
# ---------------------------------------------------------------------------------------------------------------------


def _multistep_table(sign, update, orders, lam, la, ls, eta=0.0) -> dict:
    """Per-step ``order``, ``ratio`` and the vector ``w`` (``w[j]``: weight of the output ``j`` steps back; ``K =
    max(orders)`` entries, zero beyond the step's order) for the grid ``lam``."""
    n = lam.shape[0] - 1
    kmax = max(orders)
    ords = torch.tensor(orders)
    ratio_full = torch.zeros((n,) + lam.shape[1:], dtype=torch.float64)
    ws = torch.zeros(ratio_full.shape + (kmax,), dtype=torch.float64)
    for k in sorted(set(orders)):
        idx = (ords == k).nonzero().flatten()
        nodes = torch.stack([lam[idx - j] for j in range(k)], -1)
        rule = update_rule(update, True, k)
        ratio, c = combination(sign, rule, nodes, la[idx], ls[idx], la[idx + 1], ls[idx + 1], eta)
        ratio_full[idx] = ratio
        ws[idx, ..., :k] = c
    return {"order": ords, "ratio": host_scalars(ratio_full), "w": vector_column(ws)}


def singlestep_table(
    base, sign, update, orders, nodes_of=STAGE_NODES, lower_order: bool = False, end: tuple | None = None
) -> dict:
    r"""Stages and final update of singlestep steps with intermediate times at ``lambda + r h`` (``stages="lambda"``)
    from each grid point of ``base`` (a [`GridTable`][sde_diffusion.solvers.table.GridTable]) to the next one, or to
    ``end = (log_alpha_end, log_sigma_end)`` (per step, ``(N,)`` or ``(N, B)``: an arbitrary end point such as an
    ancestral ``sigma_down``, at \(\lambda_{\rm end} = \log\alpha_{\rm end} - \log\sigma_{\rm end}\); then
    ``h = lambda_end - lambda``).

    Keys (``K = max(orders)``; entry ``i`` of a stage vector is stage ``i + 1``, at node ``r_{i+1}``; stage 0 is
    the step's start): ``order``; for ``K > 1`` the vectors of ``K - 1`` entries ``t_stage`` (a float64 time: the
    step makes the model-time tensor with ``time_like``), ``alpha_stage``, ``sigma_stage``, ``ratio_stage`` and the
    matrix ``w_stage`` (``K - 1`` by ``K - 1``; ``w_stage[i][m]``, ``m <= i``: weight of the output at stage ``m``
    in the update to stage ``i + 1``); the final update ``ratio`` and ``w`` (``K`` entries).
    With ``lower_order`` also ``ratio_low`` and ``w_low`` (``K - 1`` entries): the final update of order ``k - 1``
    from the same stages (the embedded lower-order solution of DPM-Solver-12/23, arXiv:2206.00927 Alg. 4). Entries
    beyond a step's order are finite padding (the step's start point, zero weights), never read.
    """
    grid, lam, la, ls = base, base.lam_grid, base.log_alpha, base.log_sigma
    la_end, ls_end = (la[1:], ls[1:]) if end is None else end
    kmax = max(orders)
    ords = torch.tensor(orders)
    h = (la_end - ls_end) - lam[:-1]
    like = lam[:-1]
    ns = max(kmax - 1, 1)  # (a step of order 1 has no stage: keep one padding entry so the vectors are not empty)

    def pad(v: torch.Tensor, k: int) -> torch.Tensor:
        return v[..., None].expand(v.shape + (k,)).clone()

    t_st, la_st, ls_st = pad(base.ts[:-1], ns), pad(la[:-1], ns), pad(ls[:-1], ns)
    ratio_st = torch.zeros_like(t_st)
    w_st = torch.zeros(t_st.shape + (ns,), dtype=torch.float64)
    ratio, w = torch.zeros_like(like), torch.zeros(like.shape + (kmax,), dtype=torch.float64)
    ratio_low, w_low = torch.zeros_like(like), torch.zeros(like.shape + (ns,), dtype=torch.float64)
    for k in sorted(set(orders)):
        idx = (ords == k).nonzero().flatten()
        r = nodes_of[k]
        lam_nodes = [lam[idx]]
        for j in range(1, k):
            stage = grid.at_lambda(lam[idx] + r[j] * h[idx])
            la_j, ls_j = stage.log_alpha, stage.log_sigma
            rule = update_rule(update, False, j, final=False)
            ratio_j, c = combination(sign, rule, torch.stack(lam_nodes, -1), la[idx], ls[idx], la_j, ls_j)
            t_st[idx, ..., j - 1], la_st[idx, ..., j - 1], ls_st[idx, ..., j - 1] = stage.t, la_j, ls_j
            ratio_st[idx, ..., j - 1] = ratio_j
            w_st[idx, ..., j - 1, :j] = c
            lam_nodes.append(la_j - ls_j)
        finals = [(ratio, w, k)] + ([(ratio_low, w_low, k - 1)] if lower_order and k > 1 else [])
        for ratio_f, w_f, p in finals:
            rule = update_rule(update, False, p, final=True)
            ratio_f[idx], w_f[idx, ..., :p] = combination(
                sign, rule, torch.stack(lam_nodes[:p], -1), la[idx], ls[idx], la_end[idx], ls_end[idx]
            )
    table: dict = {"order": ords}
    if kmax > 1:
        table.update(
            t_stage=vector_column(t_st),
            alpha_stage=vector_column(torch.exp(la_st)),
            sigma_stage=vector_column(torch.exp(ls_st)),
            ratio_stage=vector_column(ratio_st),
            w_stage=matrix_column(w_st),
        )
    table.update(ratio=ratio, w=vector_column(w))
    if lower_order:
        table.update(ratio_low=ratio_low, w_low=vector_column(w_low))
    return table


def _grid_table(sign, update, groups, lam, la, ls) -> dict:
    """Per grid interval: ``pos`` (position in its group), ``group_end``, ``ratio`` and the vector ``w``
    (``max(groups)`` entries) of the update from the group's first point to the interval's end point with the outputs
    at the group's points so far."""
    n = lam.shape[0] - 1
    if sum(groups) != n:
        raise ValueError(f"orders {groups} span {sum(groups)} grid intervals; the grid has {n}")
    starts, pos, sizes = [], [], []
    p = 0
    for k in groups:
        for j in range(k):
            starts.append(p)
            pos.append(j)
            sizes.append(k)
        p += k
    starts_t, pos_t = torch.tensor(starts), torch.tensor(pos)
    kmax = max(groups)
    like = lam[:-1]
    ratio_full = torch.zeros_like(like)
    ws = torch.zeros(like.shape + (kmax,), dtype=torch.float64)
    for j, k in sorted(set(zip(pos, sizes))):
        idx = ((pos_t == j) & (torch.tensor(sizes) == k)).nonzero().flatten()
        s = starts_t[idx]
        nodes = torch.stack([lam[s + m] for m in range(j + 1)], -1)
        rule = update_rule(update, False, j + 1, final=j + 1 == k)
        ratio_full[idx], ws[idx, ..., : j + 1] = combination(sign, rule, nodes, la[s], ls[s], la[idx + 1], ls[idx + 1])
    return {
        "pos": pos_t,
        "group_end": torch.tensor([j + 1 == k for j, k in zip(pos, sizes)]),
        "ratio": ratio_full,
        "w": vector_column(ws),
    }


# ---------------------------------------------------------------------------------------------------------------------
# step helpers
# ---------------------------------------------------------------------------------------------------------------------


def _combine(ratio, x, weights, outs):
    pairs = []
    for w, o in zip(weights, outs):
        pairs += [w, o]
    return lincomb(ratio, x, *pairs)


def run_singlestep_stages(model, x, c, kind: str, k: int, first: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Model outputs at the ``k`` stages of one singlestep step (``first``: an already known output at ``x``), from
    the stage vectors of [`singlestep_table`][sde_diffusion.solvers.dpm_solver.singlestep_table]."""
    outs = [model.predict(x, c.t, kind, c.alpha, c.sigma) if first is None else first]
    if k > 1:
        t_st, a_st, s_st, r_st, w_st = c.t_stage, c.alpha_stage, c.sigma_stage, c.ratio_stage, c.w_stage
        for i in range(k - 1):  # stage i + 1 from the outputs at stages 0..i (zip stops at len(outs) = i + 1)
            u = _combine(r_st[i], x, w_st[i], outs)
            outs.append(model.predict(u, time_like(c.t, t_st[i]), kind, a_st[i], s_st[i]))
    return outs


def final_update(c, x, outs, k: int, low: bool = False) -> torch.Tensor:
    """The final combination ``ratio x + sum_m w[m] out_m`` of a step through its first ``k`` outputs (``low``: the
    embedded solution ``ratio_low``, ``w_low``)."""
    ratio, w = (c.ratio_low, c.w_low) if low else (c.ratio, c.w)
    if k == 1:
        return lincomb(ratio, x, w[0], outs[0])
    if k == 2:
        return lincomb(ratio, x, w[0], outs[0], w[1], outs[1])
    if k == 3:
        return lincomb(ratio, x, w[0], outs[0], w[1], outs[1], w[2], outs[2])
    if k == 4:
        return lincomb(ratio, x, w[0], outs[0], w[1], outs[1], w[2], outs[2], w[3], outs[3])
    return _combine(ratio, x, w[:k], outs[:k])


def multistep_update(model, x, state, c, kind: str, memory: int, z: torch.Tensor | None = None):
    """One step of a multistep method ``x_next = ratio x + sum_j w_j m_{i-j} (+ c_noise z)``: evaluates the model
    (``kind``: ``"eps"`` or ``"x0"``) at ``x``, combines it with the ``c.order - 1`` past outputs in ``state``
    (newest first) and keeps ``memory`` outputs. Returns ``(x_next, state)``."""
    hist = (model.predict(x, c.t, kind, c.alpha, c.sigma),) + state
    x_next = final_update(c, x, hist, c.order)
    if z is not None:
        x_next = (
            x_next.add_(z, alpha=c.c_noise)
            if not isinstance(c.c_noise, torch.Tensor)
            else x_next.addcmul_(c.c_noise, z)
        )
    return x_next, hist[:memory]


# ---------------------------------------------------------------------------------------------------------------------
# the solvers
# ---------------------------------------------------------------------------------------------------------------------


class _DPMBase(Solver):
    """Shared machinery of DPM-Solver (``sign = +1``, noise prediction) and DPM-Solver++ (``sign = -1``)."""

    sign = 1
    kind = "eps"
    exact_for_point_mass = True

    def __init__(
        self,
        order: int = 2,
        multistep: bool = False,
        lower_order_final: bool = True,
        update: str = "paper",
        stages: str = "lambda",
        orders=None,
    ):
        order = check_int("order", order, 1, 3)
        self.multistep = check_bool("multistep", multistep)
        self.lower_order_final = check_bool("lower_order_final", lower_order_final)
        self.update = check_choice("update", update, UPDATES)
        self.stages = check_choice("stages", stages, ("lambda", "grid"))
        if orders is not None:
            orders = check_int_sequence("orders", orders, 1, 3)
            if multistep:
                raise ValueError("orders (per-step orders) is for singlestep methods; multistep warms up by itself")
            order = max(orders)
        if multistep and stages == "grid":
            raise ValueError("stages='grid' is for singlestep methods")
        self.orders = orders
        self.order_option = order
        self.order = float(order)
        if multistep and order == 3 and update != "exact":
            self.order = 2.0  # the published 3M rule ("ref3") is second order: see the class docstring
        if orders is not None:
            self.order = float(max(orders))  # nominal: the tuple fixes the number of steps
        self.nfe_per_step = order if not multistep and stages == "lambda" else 1
        # model outputs kept between loop steps (stages="grid" also keeps the group's first state)
        self.memory = order - 1 if multistep or stages == "grid" else 0

    def options(self):
        opts = {
            "order": self.order_option,
            "multistep": self.multistep,
            "lower_order_final": self.lower_order_final,
            "update": self.update,
        }
        if not self.multistep:
            opts["stages"] = self.stages
        if self.orders is not None:
            opts["orders"] = self.orders
        return opts

    # ---- per-step orders --------------------------------------------------------------------------------------
    def step_orders(self, steps: int) -> tuple[int, ...]:
        """Order used at each step of the loop (``stages="grid"``: group sizes, which sum to ``steps``)."""
        lof = "auto" if self.lower_order_final else False  # (diffusers' DPMSolverMultistepScheduler rule)
        if self.multistep:
            return step_orders(self.order_option, steps, warmup=True, lower_order_final=lof)
        if self.stages == "grid":
            return (
                self.orders
                if self.orders is not None
                else grid_groups(self.order_option, steps, self.lower_order_final)
            )
        if self.orders is not None:
            if len(self.orders) != steps:
                raise ValueError(f"orders has {len(self.orders)} entries for a grid of {steps} steps")
            return self.orders
        return step_orders(self.order_option, steps, warmup=False, lower_order_final=lof)

    def final_nfe(self, steps):
        if not self.multistep and self.stages == "lambda":
            return sum(self.step_orders(steps))
        return steps

    # ---- coefficients -----------------------------------------------------------------------------------------
    def coefficients(self, schedule, ts, base):
        la, ls, lam = base.log_alpha, base.log_sigma, base.lam_grid
        orders = self.step_orders(ts.shape[0] - 1)
        if self.multistep:
            return _multistep_table(self.sign, self.update, orders, lam, la, ls)
        if self.stages == "grid":
            return _grid_table(self.sign, self.update, orders, lam, la, ls)
        return singlestep_table(base, self.sign, self.update, orders)

    # ---- one step ---------------------------------------------------------------------------------------------
    def step(self, model, x, state, c, noise):
        if self.multistep:
            return self._multistep(model, x, state, c)
        if self.stages == "grid":
            return self._grid_step(model, x, state, c)
        outs = run_singlestep_stages(model, x, c, self.kind, c.order)
        return final_update(c, x, outs, c.order), state

    def _multistep(self, model, x, state, c, z=None):
        return multistep_update(model, x, state, c, self.kind, self.memory, z)

    def _grid_step(self, model, x, state, c):
        out = model.predict(x, c.t, self.kind, c.alpha, c.sigma)
        x_start, outs = (x, (out,)) if c.pos == 0 else (state[0], state[1:] + (out,))
        x_next = final_update(c, x_start, outs, c.pos + 1)
        return x_next, (() if c.group_end else (x_start,) + outs)


_COMMON_DOC = r"""

    Options:
        order: 1, 2 or 3.
        multistep: ``False`` -- singlestep (Runge--Kutta-like): ``order`` evaluations per step at \(\lambda + r h\)
            (\(r = 1/2\); \(1/3, 2/3\)); ``True`` -- multistep (Adams-like): one evaluation per step, the previous
            ``order - 1`` outputs travel in the state; the first steps warm up with orders ``1, 2``.
        lower_order_final: when the grid has fewer than 15 steps, use order ``min(order, steps - i)`` at step ``i``
            (last step first order, the one before at most second): the rule of diffusers'
            ``DPMSolverMultistepScheduler``. With ``stages="grid"``: diffusers' singlestep order list.
        update: ``"paper"`` (default: Lu et al.'s algorithms / reference code), ``"midpoint"``, ``"heun"``
            (diffusers' ``solver_type``), ``"exact"`` (exponentially weighted Lagrange weights for every update).
            Only orders 2 and 3 differ; ``"heun"`` equals ``"exact"`` except for 3M.
        stages: singlestep only: ``"lambda"`` (paper) or ``"grid"`` (diffusers' singlestep scheduler: a step of
            order ``k`` spans ``k`` grid intervals and uses the grid points as its stages).
        orders: singlestep only: explicit per-step orders (``stages="lambda"``, one per step) or group sizes
            (``stages="grid"``, summing to the number of intervals); overrides ``order``/``lower_order_final``.

    Order (global, in lambda): ``order``, except the published third-order *multistep* rule (all updates but
    ``"exact"``), which keeps only half of the \(\varphi_3\) term: its local error is \(O(h^3)\) and the method is
    second order (slope 2 on Gaussian data, tests/test_dpm_solver.py; ``update="exact"`` gives 3). The first-order
    warm-up step of 3M adds an \(O(h^2)\) term whose constant is the integrand's derivative at ``t_start`` (tiny at high
    noise: third order is what is observed). With ``stages="grid"`` the
    ``"paper"``/``"midpoint"`` third-order update needs its stages at \(r = 1/3, 2/3 + O(h)\), which holds on any grid
    that is a smooth map of a uniform one (logSNR, time-uniform, time-quadratic; slopes in tests/test_dpm_solver.py).
    NFE: singlestep ``order`` per step (``stages="grid"``: one per interval), multistep one per step.
    Memory: multistep ``order - 1`` model outputs; singlestep none between steps (``stages="grid"``: the group's
    first state and up to ``order - 1`` outputs).
"""


@register("dpm_solver")
class DPMSolver(_DPMBase):
    __doc__ = (
        r"""DPM-Solver with noise prediction (Lu et al. 2022, arXiv:2206.00927).

    Integrates

    \[x_s = \frac{\alpha_s}{\alpha_t} x_t - \sigma_s \int_0^h e^{h-u}\, \epsilon(\lambda_t + u)\, \mathrm{d}u\]

    (\(h = \lambda_s - \lambda_t\) in the half log-SNR). DPM-Solver-1 is DDIM(eta=0) and DPM-Solver++-1;
    DPM-Solver-2/-3 are Algorithms 1/2 of the paper (singlestep, \(r_1 = 1/2\); \(r_1 = 1/3, r_2 = 2/3\)); multistep
    2/3 are the multistep DPM-Solver of the reference code and diffusers (``algorithm_type="dpmsolver"``).
    """
        + _COMMON_DOC
    )
    sign = 1
    kind = "eps"
    reference = "arXiv:2206.00927"

    def __init__(
        self,
        order: int = 3,
        multistep: bool = False,
        lower_order_final: bool = True,
        update: str = "paper",
        stages: str = "lambda",
        orders=None,
    ):
        super().__init__(order, multistep, lower_order_final, update, stages, orders)


@register("dpm_solver++")
class DPMSolverPP(_DPMBase):
    __doc__ = (
        r"""DPM-Solver++ with data prediction (Lu et al. 2022, arXiv:2211.01095).

    Integrates

    \[x_s = \frac{\sigma_s}{\sigma_t} x_t + \alpha_s \int_0^h e^{-(h-u)}\, x_0(\lambda_t + u)\, \mathrm{d}u;\]

    dynamic thresholding acts on the \(x_0\) predictions through the model
    (``Model(..., thresholding=DynamicThresholding())``).
    DPM-Solver++-1 is DDIM(eta=0) and DPM-Solver-1; ``order=2, multistep=False`` is DPM-Solver++(2S) (Alg. 1),
    ``order=2, multistep=True`` DPM-Solver++(2M) (Alg. 2), ``order=3, multistep=True`` the 3M of the reference
    code and diffusers' ``DPMSolverMultistepScheduler(solver_order=3)``.
    """
        + _COMMON_DOC
    )
    sign = -1
    kind = "x0"
    reference = "arXiv:2211.01095"

    def __init__(
        self,
        order: int = 2,
        multistep: bool = True,
        lower_order_final: bool = True,
        update: str = "paper",
        stages: str = "lambda",
        orders=None,
    ):
        super().__init__(order, multistep, lower_order_final, update, stages, orders)


@register("sde_dpm_solver++")
class SDEDPMSolverPP(_DPMBase):
    r"""SDE-DPM-Solver++ 1 and 2M (Lu et al. 2022, arXiv:2211.01095 appendix; diffusers ``"sde-dpmsolver++"``;
    k-diffusion's ``eta``).

    For the reverse SDE family

    \[\mathrm{d}x = \big[f x - \tfrac{1 + \eta}{2} g^2 \nabla_x \log p_t(x)\big]\, \mathrm{d}t
    + \sqrt{\eta}\, g\, \mathrm{d}\bar W\]

    (\(\eta = 1\) the reverse SDE, \(\eta = 0\) the probability-flow ODE) the data-prediction form in \(\lambda\) has
    the linear part \(e^{-(1 + \eta) h}\), so with the data prediction frozen (order 1) or linear in lambda (2M):

    \[x_s = \frac{\sigma_s}{\sigma_t} e^{-\eta h} x_t + \alpha_s \sum_j W_j\big((1 + \eta) h\big)\, x_{0,j}
    + \sigma_s \sqrt{1 - e^{-2 \eta h}}\, z\]

    (\(W\) the data-prediction weights of the step \((1 + \eta) h\) with the same node ratios). \(\eta = 1\):
    \(x_s = \frac{\sigma_s}{\sigma_t} e^{-h} x_t + \alpha_s (1 - e^{-2h})\, x_0 + \sigma_s \sqrt{1 - e^{-2h}}\, z\)
    (order 1) -- the DDPM posterior step, i.e. DDIM(eta=1) given the same \(z\). \(\eta = 0\) is DPM-Solver++.
    The ``z`` of each step is the step's normalised Brownian increment (``noise.increment``).

    Options: ``order`` 1 or 2 (2M: one evaluation per step, memory 1 output, warm-up and ``lower_order_final`` as
    [`DPMSolverPP`][sde_diffusion.solvers.dpm_solver.DPMSolverPP]), ``eta >= 0``, ``update``
    (``"paper"``/``"midpoint"``: diffusers' midpoint form;
    ``"heun"``/``"exact"``: the exact linear weights).
    Order: weak order 1 for ``eta > 0`` (strong order 1/2: the increment is not the weighted stochastic
    integral); for ``eta = 0`` the ODE order ``order``. NFE 1 per step.
    """

    sign = -1
    kind = "x0"
    reference = "arXiv:2211.01095"

    def __init__(self, order: int = 2, eta: float = 1.0, lower_order_final: bool = True, update: str = "paper"):
        order = check_int("order", order, 1, 2)
        eta = check_nonnegative("eta", eta)
        super().__init__(order, True, lower_order_final, update)
        self.eta = eta
        self.stochastic = self.eta > 0
        if self.stochastic:
            # strong order 1 for eta = 1 (additive noise; measured against torchsde), none for other eta
            self.order, self.strong_order = 1.0, (1.0 if self.eta == 1.0 else None)

    def options(self):
        return {
            "order": self.order_option,
            "eta": self.eta,
            "lower_order_final": self.lower_order_final,
            "update": self.update,
        }

    def coefficients(self, schedule, ts, base):
        la, ls, lam = base.log_alpha, base.log_sigma, base.lam_grid
        orders = self.step_orders(ts.shape[0] - 1)
        table = _multistep_table(self.sign, self.update, orders, lam, la, ls, eta=self.eta)
        table["c_noise"] = torch.exp(ls[1:]) * torch.sqrt(-torch.expm1(-2.0 * self.eta * (lam[1:] - lam[:-1])))
        return table

    def step(self, model, x, state, c, noise):
        z = noise.increment(x) if self.stochastic else None
        return self._multistep(model, x, state, c, z)


@register("dpm_solver_fast")
class DPMSolverFast(Solver):
    r"""DPM-Solver-fast (Lu et al. 2022, arXiv:2206.00927, sec. 3.4): singlestep DPM-Solver steps whose orders follow
    [`fast_orders`][sde_diffusion.solvers.dpm_solver.fast_orders] (``3, ..., 3`` then ``2, 1`` / ``1`` / ``2``), on the
    fixed-grid path of
    [`sample`][sde_diffusion.sample.sample] -- the solver only builds the order list (and, given a budget, the grid).

    Two ways to call it:

    * ``nfe=`` (the paper's form): exactly ``nfe`` evaluations on ``K = nfe // 3 + 1`` outer steps of the solver's
      own ``grid`` (``"logsnr"`` by default, uniform in lambda as in the paper). ``sample`` then refuses ``steps=``
      and ``grid=``: the budget fixes both. Order (in the outer step): 3 when ``nfe % 3 == 2`` (the last step is
      DPM-Solver-2); otherwise the last step is a DPM-Solver-1 step with local error \(O(H^2)\) and the order is 2.
    * no ``nfe`` (``steps=K`` and any grid of ``sample``, what studies and the CLI use): the orders of the budget
      ``3K - 1`` (order 3: ``[3]*(K-1) + [2]``), ``2K`` (order 2) or ``K`` (order 1) -- global order ``order``;
      ``steps_for_nfe(nfe)`` rounds a budget down to that form.

    NFE: ``sum(orders)``; memory 0.
    """

    exact_for_point_mass = True
    reference = "arXiv:2206.00927"
    kind = "eps"

    def __init__(self, nfe: int | None = None, order: int = 3, update: str = "paper", grid: str | None = None):
        order = check_int("order", order, 1, 3)
        self.nfe = nfe
        self.orders = None if nfe is None else fast_orders(nfe, order)
        if nfe is None and grid is not None:
            raise ValueError("grid= is an option of the budget form (with nfe=); without nfe pass grid= to sample")
        self.order_option = order
        self.update = check_choice("update", update, UPDATES)
        self.grid = (
            None if grid is None else check_choice("grid", grid, ("logsnr", "time_uniform", "time_quadratic", "karras"))
        )
        self.nfe_per_step = order
        self.order = float(2 if self.orders is not None and order == 3 and self.orders[-1] == 1 else order)

    def options(self):
        opts = {"order": self.order_option, "update": self.update}
        if self.nfe is not None:
            opts.update(nfe=self.nfe, grid=self.grid or "logsnr")
        return opts

    def step_orders(self, steps: int) -> tuple[int, ...]:
        """Orders of the ``steps`` outer steps (see the class docstring)."""
        if self.orders is not None:
            if steps != len(self.orders):
                raise ValueError(f"dpm_solver_fast(nfe={self.nfe}) takes {len(self.orders)} steps, not {steps}")
            return self.orders
        return fast_orders({3: 3 * steps - 1, 2: 2 * steps, 1: steps}[self.order_option], self.order_option)

    def final_nfe(self, steps: int) -> int:
        return sum(self.step_orders(steps))

    def steps_for_nfe(self, nfe: int) -> int:
        if self.orders is None:
            return super().steps_for_nfe(nfe)
        if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
            raise ValueError(f"an NFE budget must be a positive int, got {nfe!r}")
        assert self.nfe is not None  # set together with orders
        return len(self.orders) if nfe >= self.nfe else 0

    def own_grid(self, schedule, t_start, t_end):
        if self.orders is None:
            return None
        from ..grids import make_grid

        return make_grid(schedule, self.grid or "logsnr", len(self.orders), t_start, t_end)

    def coefficients(self, schedule, ts, base):
        return singlestep_table(base, 1, self.update, self.step_orders(ts.shape[0] - 1))

    def step(self, model, x, state, c, noise):
        outs = run_singlestep_stages(model, x, c, self.kind, c.order)
        return final_update(c, x, outs, c.order), state
