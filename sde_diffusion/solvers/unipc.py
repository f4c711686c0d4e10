r"""UniPC: unified predictor--corrector multistep exponential integrators (Zhao et al. 2023, arXiv:2302.04867).

With \(h_i = \lambda_{i+1} - \lambda_i\), the model output \(m\) (data prediction \(x_0\) or noise prediction
\(\epsilon\)) and \(\hat h = -h\) (data) or \(\hat h = h\) (noise), one UniP-p step from \(t_i\) to \(t_{i+1}\) is

\[x_{i+1} = c_x x_i - c\, (e^{\hat h} - 1)\, m_i - c\, B(\hat h) \sum_{k=1}^{p-1} \rho_k D_k, \qquad
D_k = \frac{m_{i-k} - m_i}{r_k},\]

with \(r_k = (\lambda_{i-k} - \lambda_i)/h_i\) and, for data prediction, \(c_x = \sigma_{i+1}/\sigma_i\),
\(c = \alpha_{i+1}\) (noise prediction: \(c_x = \alpha_{i+1}/\alpha_i\), \(c = \sigma_{i+1}\)).
\(B(\hat h) = \hat h\) (``b_h="bh1"``) or \(e^{\hat h} - 1\) (``"bh2"``). The \(\rho_k\) solve the order conditions

\[\sum_k \rho_k r_k^{n-1} = \frac{\hat h\, \varphi_{n+1}(\hat h)\, n!}{B(\hat h)}, \qquad n = 1, \dots, p-1\]

(\(\varphi\) from [`sde_diffusion.solvers.expint`][sde_diffusion.solvers.expint]); for a single unknown \(\rho = 1/2\)
(the \(h \to 0\) limit,
as in the authors' code and diffusers).

UniC-p corrects \(x_{i+1}\) once the model has been evaluated there, re-using that evaluation
\(m_{i+1} = m(x_{i+1}^{\rm pred})\), which the next predictor needs anyway (no extra NFE): the same formula with the
extra node \(r = 1\) (\(D = m_{i+1} - m_i\)) and \(p\) unknowns. The corrected state is the start of the next
predictor step; the model output kept is the one at the *predicted* point.
"""

from __future__ import annotations

import math

import torch

from .base import Solver, lincomb, register, vector_column
from .expint import long_step_consistent, phis
from .options import check_bool, check_choice, check_int
from .warmup import step_orders

__all__ = ["UniPC", "unipc_weights"]


def unipc_weights(nodes: torch.Tensor, hh: torch.Tensor, b_h: str) -> tuple[torch.Tensor, torch.Tensor]:
    r"""UniP/UniC weights on the model outputs for one step (float64, vectorised).

    Args:
        nodes: ``(..., n)`` ratios \(r_k\) of the extra nodes (past nodes \(< 0\); the corrector's new node \(1\)).
        hh: ``(...)`` \(\hat h = -h\) (data prediction) or \(h\) (noise prediction).
        b_h: ``"bh1"`` (\(B = \hat h\)) or ``"bh2"`` (\(B = \operatorname{expm1}(\hat h)\)).

    Returns:
        ``(w0, w)`` with the update \(x_{\rm new} = c_x x + c\, (w_0 m_0 + \sum_k w_k m_k)\):
        \(w_k = -B \rho_k/r_k\) and \(w_0 = -\operatorname{expm1}(\hat h) - \sum_k w_k\).
    """
    n = nodes.shape[-1]
    h_phi_1 = torch.expm1(hh)
    if n == 0:
        return -h_phi_1, nodes
    big_b = hh if b_h == "bh1" else h_phi_1
    if n == 1:
        rho = torch.full_like(nodes, 0.5)
    else:
        ph = phis(hh, n + 1)
        b = torch.stack([hh * ph[k] * math.factorial(k) / big_b for k in range(1, n + 1)], dim=-1)
        vander = torch.stack([nodes**k for k in range(n)], dim=-2)  # row k: r^k
        rho = torch.linalg.solve(vander, b)
    w = -big_b[..., None] * rho / nodes
    return -h_phi_1 - w.sum(-1), w


@register("unipc")
class UniPC(Solver):
    r"""UniPC (Zhao et al. 2023, arXiv:2302.04867): multistep UniP-p predictor with the UniC corrector.

    Args:
        predictor_order: order \(p\) of the UniP predictor (1--3, default 2); the method's order is \(p + 1\) with
            the corrector.
        b_h: ``"bh1"`` (\(B(h) = h\)) or ``"bh2"`` (\(B(h) = e^h - 1\), default; diffusers' ``solver_type``).
        prediction: ``"x0"`` (data prediction, default) or ``"eps"`` (noise prediction).
        lower_order_final: ``"auto"`` (default): predictor order \(\min(p, \mathrm{steps} - i)\) at step \(i\) on
            grids of fewer than 15 steps (the rule of DPM-Solver's ``lower_order_final``; how much it helps is measured
            in docs/benchmarks/accuracy.md), leaving the asymptotic order alone; ``True``: at any step count
            (diffusers' UniPC rule; the final order-1 step caps the global order at 2); ``False``: never
            ([`step_orders`][sde_diffusion.solvers.warmup.step_orders]).
        disable_corrector: plain UniP-p (order \(p\)).

    ``order`` (global): \(p + 1\) with the corrector, \(p\) without; \(\min(\cdot, 2)\) with ``lower_order_final=True``
    (slopes on Gaussian data with the closed-form flow; UniP-3 without corrector on a Gaussian mixture, being
    super-convergent on Gaussian data: tests/test_unipc.py). 1 NFE per step: the corrector at step \(i\) re-uses the
    evaluation at \(x_i\) that the predictor from \(t_i\) needs; the last step has no corrector (it would need one
    more NFE), which keeps the order: its local error is that of UniP-p, \(O(h^{p+1})\). Memory: \(p\) model
    outputs plus the previous state. Warm-up: predictor orders ``1, 2, ..`` on the first steps, and the corrector at
    step \(i\) has the order of the predictor of step \(i - 1\).

    Equivalences: order 1 without corrector is DDIM(eta=0) = DPM-Solver++-1 (``x0``) = DPM-Solver-1 (``eps``);
    UniP-2 (``bh2``, ``x0``) is DPM-Solver++(2M); UniP-3 with ``eps`` is DEIS ``logrho``-3 from its third step.
    Every option reproduces diffusers' ``UniPCMultistepScheduler`` (``final_sigmas_type="sigma_min"``, the same
    ``lower_order_final``) with exact noise levels (docs/theory/unipc.md). Data prediction is the more robust
    choice for low-precision networks.
    """

    nfe_per_step = 1
    reference = "arXiv:2302.04867"
    exact_for_point_mass = True

    def __init__(
        self,
        predictor_order: int = 2,
        b_h: str = "bh2",
        prediction: str = "x0",
        lower_order_final: bool | str = "auto",
        disable_corrector: bool = False,
    ):
        self.predictor_order = check_int("predictor_order", predictor_order, 1, 3)
        self.b_h = check_choice("b_h", b_h, ("bh1", "bh2"))
        self.prediction = check_choice("prediction", prediction, ("x0", "eps"))
        self.lower_order_final = check_choice("lower_order_final", lower_order_final, (True, False, "auto"))
        self.disable_corrector = check_bool("disable_corrector", disable_corrector)
        p = self.predictor_order
        nominal = p if disable_corrector else p + 1
        self.order = float(min(nominal, 2) if lower_order_final is True else nominal)
        self.memory = p

    def options(self):
        return {
            "predictor_order": self.predictor_order,
            "b_h": self.b_h,
            "prediction": self.prediction,
            "lower_order_final": self.lower_order_final,
            "disable_corrector": self.disable_corrector,
        }

    def _weights(self, base, lam, idx, k, extra_one):
        """``c_x`` and weights ``[w0, w1..w_{k-1}, (w_new)]`` of the steps starting at grid indices ``idx``."""
        h = base["h"][idx]
        data = self.prediction == "x0"
        nodes = (
            torch.stack([(lam[idx - j] - lam[idx]) / h for j in range(1, k)], dim=-1)
            if k > 1
            else h.new_zeros(h.shape + (0,))
        )
        if extra_one:
            nodes = torch.cat([nodes, torch.ones_like(h)[..., None]], dim=-1)
        w0, w = unipc_weights(nodes, -h if data else h, self.b_h)
        a, s, a_next, s_next = (base[k][idx] for k in ("alpha", "sigma", "alpha_next", "sigma_next"))
        c_x, start, end = (s_next / s, a, a_next) if data else (a_next / a, s, s_next)
        weights = end[..., None] * torch.cat([w0[..., None], w], dim=-1)
        return c_x, long_step_consistent(weights, h, c_x, start, end)

    def coefficients(self, schedule, ts, base):
        n, p = ts.shape[0] - 1, self.predictor_order
        lam = torch.cat([base["lam"], base["lam_next"][-1:]])
        ks = torch.tensor(step_orders(p, n, lower_order_final=self.lower_order_final))
        qs = torch.zeros_like(ks)
        if not self.disable_corrector:
            qs[1:] = ks[:-1]
        shape = base["h"].shape
        px, cx = torch.zeros(shape, dtype=torch.float64), torch.zeros(shape, dtype=torch.float64)
        pw = torch.zeros(shape + (p,), dtype=torch.float64)
        cw = torch.zeros(shape + (p + 1,), dtype=torch.float64)  # [m_{i-1}, .., m_{i-q}, m_i] (new node last)
        for k in range(1, p + 1):
            idx = (ks == k).nonzero().flatten()
            if idx.numel():
                px[idx], pw[idx, ..., :k] = self._weights(base, lam, idx, k, False)
            idx = (qs == k).nonzero().flatten()
            if idx.numel():
                cx[idx], w = self._weights(base, lam, idx - 1, k, True)
                cw[idx, ..., :k], cw[idx, ..., p] = w[..., :k], w[..., k]
        return {
            "k": ks,
            "q": qs,
            "p_x": px,
            "c_x": cx,
            "c_new": cw[..., p],
            "p_w": vector_column(pw),
            "c_w": vector_column(cw[..., :p]),
        }

    def step(self, model, x, state, c, noise):
        m = model.predict(x, c.t, self.prediction, c.alpha, c.sigma)
        hist = state[1:]  # m_{i-1}, m_{i-2}, ...
        if c.q:  # UniC: re-uses m = m(x_i^pred)
            cw = c.c_w
            pairs = [v for j in range(c.q) for v in (cw[j], hist[j])]
            x = lincomb(c.c_x, state[0], c.c_new, m, *pairs)
        pw = c.p_w
        pairs = [v for j in range(1, c.k) for v in (pw[j], hist[j - 1])]
        return lincomb(c.p_x, x, pw[0], m, *pairs), (x,) + ((m,) + hist)[: self.memory]
