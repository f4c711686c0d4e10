r"""Reference solutions from torchdiffeq (probability-flow ODE) and torchsde (reverse SDE).

These wrap the libraries; nothing here re-implements a solver.

* [`probability_flow_reference`][sde_diffusion.reference.probability_flow_reference] integrates the PF-ODE in the
  well-conditioned variables \(y = x/\alpha\) and
  \(\lambda\): \(\mathrm{d}y/\mathrm{d}\lambda = -e^{-\lambda} \epsilon(\alpha y, t(\lambda))\) (the
  variation-of-constants form of
  DPM-Solver, arXiv:2206.00927), float64, with the requested times passed as ``step_t`` so that the adaptive solver
  *steps onto* them instead of interpolating (interpolated end points are only good to ~1e-7).
* [`reverse_sde_reference`][sde_diffusion.reference.reverse_sde_reference] integrates the reverse SDE with
  ``torchsde.sdeint`` in \(s = -t\) on a given
  Brownian path, so that it can be compared pathwise with our stochastic solvers fed by the same path
  ([`BrownianNoise`][sde_diffusion.solvers.base.BrownianNoise]). It integrates interval by interval, so every requested
  time is stepped onto (torchsde would interpolate linearly at intermediate output times).
"""

from __future__ import annotations

import torch

from .models import Model
from .sdes import ReverseSDE

__all__ = ["probability_flow_reference", "reverse_sde_reference", "brownian_path"]


def _as_times(ts) -> torch.Tensor:
    ts = torch.as_tensor(ts, dtype=torch.float64).flatten()
    if ts.numel() < 2:
        raise ValueError("ts must hold at least a start and an end time")
    d = ts[1:] - ts[:-1]
    if not (bool((d < 0).all()) or bool((d > 0).all())):
        raise ValueError("ts must be strictly monotone")
    return ts


def probability_flow_reference(
    model: Model,
    x_T: torch.Tensor,
    ts,
    *,
    method: str = "dopri5",
    rtol: float = 1e-10,
    atol: float = 1e-10,
    options: dict | None = None,
) -> torch.Tensor:
    """Solve the probability-flow ODE from ``ts[0]`` through every time in ``ts`` (either direction).

    Returns a tensor of shape ``(len(ts), *x_T.shape)``; entry 0 is ``x_T``. The state is integrated in float64
    whatever the dtype of ``x_T`` (and cast back).
    """
    from torchdiffeq import odeint

    sch = model.schedule
    ts = _as_times(ts)
    sch.check_t(ts, "ts")
    lams = sch.lambda_unchecked(ts)
    dtype = x_T.dtype
    x = x_T.to(torch.float64)
    b = x.shape[0]

    def field(lam, y):
        t = sch.inverse_lambda_unchecked(lam.reshape(1)).to(device=y.device)
        a, s = sch.alpha_sigma_unchecked(t)
        tv = t.expand(b)
        eps = model.predict(a * y, tv, "eps", a, s)
        return -torch.exp(-lam) * eps

    y0 = x / torch.exp(sch.log_alpha_unchecked(ts[:1])).to(x.device)
    opts = (
        {"step_t": lams.to(x.device)} if method in ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2") else {}
    )
    opts.update(options or {})
    ys = odeint(field, y0, lams.to(x.device), method=method, rtol=rtol, atol=atol, options=opts)
    alphas = torch.exp(sch.log_alpha_unchecked(ts)).to(x.device).reshape((-1,) + (1,) * x.ndim)
    out = (alphas * ys).to(dtype)
    out[0] = x_T  # exactly, not alpha * (x_T / alpha)
    return out


def brownian_path(
    x_like: torch.Tensor, t_min: float, t_max: float, *, seed: int = 0, tol: float = 1e-8, levy_area: str = "space-time"
):
    """A ``torchsde.BrownianInterval`` over ``s = -t`` in ``[-t_max, -t_min]`` with the shape of ``x_like``
    (flattened to ``(B, d)``), reproducible from ``seed``. Query increments with ``bm(-t_a, -t_b)``."""
    import torchsde

    flat = x_like.reshape(x_like.shape[0], -1)
    return torchsde.BrownianInterval(
        t0=-float(t_max),
        t1=-float(t_min),
        size=tuple(flat.shape),
        dtype=flat.dtype,
        device=flat.device,
        entropy=seed,
        tol=tol,
        levy_area_approximation=levy_area,
    )


def reverse_sde_reference(
    model: Model,
    x_T: torch.Tensor,
    ts,
    bm,
    *,
    method: str = "srk",
    dt: float = 1e-3,
    adaptive: bool = False,
    rtol: float = 1e-6,
    atol: float = 1e-6,
) -> torch.Tensor:
    """Solve the reverse SDE from ``ts[0]`` down through ``ts`` on the Brownian path ``bm`` (indexed by ``s = -t``,
    of shape ``(B, d)`` with ``d`` the flattened event size, e.g. from
    [`brownian_path`][sde_diffusion.reference.brownian_path]).

    ``method`` is any torchsde Itô method for diagonal noise (``"euler"``, ``"milstein"``, ``"srk"``); ``dt`` is its
    step in ``s``. Returns ``(len(ts), *x_T.shape)``.
    """
    import torchsde

    ts = _as_times(ts)
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError("reverse_sde_reference integrates backwards in t: ts must be decreasing")
    model.schedule.check_t(ts, "ts")
    sde = ReverseSDE(model.schedule, model).torchsde(event_shape=tuple(x_T.shape[1:]))
    ss = (-ts).to(device=x_T.device, dtype=x_T.dtype)
    ys = [x_T.reshape(x_T.shape[0], -1)]
    # torchsde clips its last step to the final time only and *interpolates* linearly at earlier output times,
    # which on a Brownian path is off by O(sqrt(dt)); integrating segment by segment steps onto every time.
    for i in range(len(ts) - 1):
        seg = torchsde.sdeint(
            sde, ys[-1], ss[i : i + 2], bm=bm, method=method, dt=dt, adaptive=adaptive, rtol=rtol, atol=atol
        )
        ys.append(seg[-1])
    return torch.stack(ys).reshape((len(ts),) + tuple(x_T.shape))
