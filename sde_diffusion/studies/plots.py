r"""Matplotlib figures of studies, drawn on the Agg backend.

Figures are created as ``matplotlib.figure.Figure`` objects with an Agg canvas attached, never through ``pyplot``:
the global backend of the caller is left alone and nothing needs a display.

* [`plot_convergence`][sde_diffusion.studies.plots.plot_convergence] -- log-log error against the actual NFE, one line
  per solver, with dashed reference
  slopes ``NFE^{-p}``; the asymptotic fit range is drawn thicker, refined points (past the requested budgets) open;
* [`plot_local_orders`][sde_diffusion.studies.plots.plot_local_orders] -- the local orders between successive NFE
  values against NFE, with the declared orders;
* [`plot_samples`][sde_diffusion.studies.plots.plot_samples] -- scatter of the final samples of 2-D problems against
  exact samples, one panel per solver
  ([`scatter_samples`][sde_diffusion.studies.plots.scatter_samples] draws one such cloud; the CLI's ``sample`` command
  uses it too);
* [`plot_trajectories`][sde_diffusion.studies.plots.plot_trajectories] -- paths of a few particles in the plane (2-D
  problems), on the solver's grid and the
  reference's;
* [`study_figure`][sde_diffusion.studies.plots.study_figure] -- the summary figure of ``sde-diffusion study``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .results import StudyResult

__all__ = [
    "new_figure",
    "plot_convergence",
    "plot_local_orders",
    "plot_work_precision",
    "plot_samples",
    "plot_trajectories",
    "study_figure",
    "nice_log_ticks",
    "save_figure",
    "scatter_samples",
    "short_label",
]


def new_figure(nrows: int = 1, ncols: int = 1, *, size: tuple[float, float] | None = None, width_ratios=None):
    """``(figure, axes array)`` on an Agg canvas (default size: 6.4 x 3.8 inches per panel, room for a legend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size or (6.4 * ncols, 3.8 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, width_ratios=width_ratios)
    return fig, axes


def save_figure(fig, path, *, dpi: int = 120) -> None:
    fig.savefig(str(path), dpi=dpi)


def short_label(label: str) -> str:
    """A compact legend label: ``dpm_solver++:order=2,multistep=true`` -> ``dpm_solver++ o2 multistep``."""
    name, _, opts = label.partition(":")
    words = []
    for item in filter(None, opts.split(",")):
        key, _, value = item.partition("=")
        if key == "order":
            words.append(f"o{value}")
        elif value == "true":
            words.append(key)
        elif value == "false":
            words.append(f"no-{key}")
        else:
            words.append(f"{key}={value}")
    return " ".join([name, *words])


def nice_log_ticks(lo: float, hi: float, *, min_ratio: float = 1.7) -> list[int]:
    """Integer ticks for a log axis over ``[lo, hi]``: the ends and the round values ``{1, 2, 5} x 10^k`` between
    them, dropping any tick closer than ``min_ratio`` (a factor) to one already kept, so that labels never overlap."""
    lo, hi = max(int(math.floor(lo)), 1), max(int(math.ceil(hi)), 1)
    round_values = [m * 10**k for k in range(len(str(hi)) + 1) for m in (1, 2, 5)]
    ticks = [lo]
    for t in sorted(v for v in round_values if lo < v < hi) + [hi]:
        if t / ticks[-1] >= min_ratio:
            ticks.append(t)
        elif t == hi and len(ticks) > 1 and hi / ticks[-2] >= min_ratio:
            ticks[-1] = hi  # keep the end, drop the round value just below it
    return ticks


def _nfe_axis(ax, lo: float, hi: float) -> None:
    """Plain-number NFE ticks that do not overlap (see
    [`nice_log_ticks`][sde_diffusion.studies.plots.nice_log_ticks])."""
    from matplotlib.ticker import NullFormatter

    ticks = nice_log_ticks(lo, hi)
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())


def _reference_slopes(ax, ns: Sequence[float], es: Sequence[float], slopes: Sequence[int]) -> None:
    """Dashed ``C NFE^{-p}`` lines through the geometric middle of the data, labelled at the right end."""
    lo, hi = min(ns), max(ns)
    mid_n = math.sqrt(lo * hi)
    mid_e = math.exp(sum(map(math.log, es)) / len(es))
    for p in slopes:
        xs = [lo, hi]
        ys = [mid_e * (x / mid_n) ** (-p) for x in xs]
        ax.plot(xs, ys, ls="--", lw=0.8, color="0.55", zorder=0)
        ax.annotate(
            f"$N^{{-{p}}}$",
            (xs[-1], ys[-1]),
            fontsize=8,
            color="0.4",
            xytext=(2, 0),
            textcoords="offset points",
            va="center",
            annotation_clip=True,
        )


def plot_convergence(
    result: StudyResult, *, metric: str = "error", ax=None, slopes: Sequence[int] = (1, 2, 3), title: str | None = None
):
    """Log-log ``metric`` against NFE for every solver of ``result`` (refined points open, the asymptotic fit
    range thicker; the legend gives the asymptotic order, or ``n/r`` when it was not reached); returns the
    figure."""
    fig = ax.figure if ax is not None else None
    if ax is None:
        fig, axes = new_figure()
        ax = axes[0, 0]
    all_n, all_e = [], []
    for i, label in enumerate(result.labels):
        ns, es = result.series(label, metric)
        if not ns:
            continue
        color = f"C{i % 10}"
        fit = result.fit(label, metric)
        order = "" if fit is None else (f" (p={fit.order:.2f})" if fit.reached else " (p n/r)")
        ax.loglog(ns, es, "-", lw=1.0, color=color, label=f"{short_label(label)}{order}")
        refined = {r.nfe for r in result.runs_of(label) if r.refined}
        for open_marker in (False, True):
            pts = [(n, e) for n, e in zip(ns, es) if (n in refined) == open_marker]
            if pts:
                face = "white" if open_marker else color
                ax.loglog(*zip(*pts), "o", ms=3.5, color=color, markerfacecolor=face, lw=0)
        if fit is not None and fit.asymptotic is not None:
            sel = [(n, e) for n, e in zip(ns, es) if fit.asymptotic.nfe_min <= n <= fit.asymptotic.nfe_max]
            if len(sel) >= 2:
                ax.loglog(*zip(*sel), "-", lw=2.6, alpha=0.45, color=color)
        all_n += ns
        all_e += es
    if all_n:
        _reference_slopes(ax, all_n, all_e, slopes)
        _nfe_axis(ax, min(all_n), max(all_n))
        ax.set_xlim(min(all_n) / 1.08, max(all_n) * 1.3)
        ax.set_ylim(min(all_e) / 2.0, max(all_e) * 2.0)  # reference slopes are clipped to the data's range
    if metric == "dist_error" and result.dist_floor is not None:
        ax.axhline(result.dist_floor, color="k", lw=0.8, ls=":", label="sampling floor")
    ax.set_xlabel(
        "NFE" + (" (open: refined past the requested budgets)" if any(r.refined for r in result.runs) else "")
    )
    ax.set_ylabel({"error": "RMS error at $t_{min}$", "dist_error": f"{result.dist_metric}"}.get(metric, metric))
    ax.set_title(title or f"{result.problem} / {result.schedule} / {result.grid}", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    _legend_outside(ax)
    return fig


def plot_local_orders(result: StudyResult, *, metric: str = "error", ax=None, title: str | None = None):
    """Local orders ``-dlog(error)/dlog(NFE)`` between successive points against the segment's geometric-mean NFE,
    one line per solver (the asymptotic range thicker), with each declared order dotted in the solver's colour;
    returns the figure."""
    fig = ax.figure if ax is not None else None
    if ax is None:
        fig, axes = new_figure(size=(4.4, 3.8))
        ax = axes[0, 0]
    mids_all, top = [], 1.0
    for i, label in enumerate(result.labels):
        fit = result.fit(label, metric)
        if fit is None or not fit.local:
            continue
        color = f"C{i % 10}"
        mids = [math.sqrt(a * b) for a, b in zip(fit.nfe[:-1], fit.nfe[1:])]
        ax.semilogx(mids, fit.local, "o-", ms=2.5, lw=0.9, color=color, label=short_label(label))
        if fit.asymptotic is not None:
            sel = [(m, q) for m, q, b in zip(mids, fit.local, fit.nfe[1:]) if b > fit.asymptotic.nfe_min]
            ax.semilogx(*zip(*sel), "-", lw=2.6, alpha=0.45, color=color)
        if fit.declared is not None:
            ax.axhline(fit.declared, color=color, lw=0.8, ls=":", alpha=0.8)
            top = max(top, fit.declared)
        mids_all += mids
    if mids_all:
        _nfe_axis(ax, min(mids_all), max(mids_all))
    ax.set_ylim(0.0, top + 1.0)  # pre-asymptotic excursions are clipped
    ax.set_xlabel("NFE (segment midpoint)")
    ax.set_ylabel("local order")
    ax.set_title(title or f"local orders: {result.problem}", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    return fig


def _legend_outside(ax) -> None:
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)


def plot_work_precision(result: StudyResult, *, metric: str = "error", ax=None, title: str | None = None):
    """Work-precision diagram: ``metric`` against the wall time of the ``sample`` call, one line per solver."""
    fig = ax.figure if ax is not None else None
    if ax is None:
        fig, axes = new_figure()
        ax = axes[0, 0]
    for i, label in enumerate(result.labels):
        pts = sorted((r.wall_time, getattr(r, metric)) for r in result.runs_of(label) if getattr(r, metric) is not None)
        if pts:
            ax.loglog(*zip(*pts), "o-", ms=3.5, lw=1.0, color=f"C{i % 10}", label=short_label(label))
    ax.set_xlabel("wall time of sample() [s]")
    ax.set_ylabel("RMS error at $t_{min}$" if metric == "error" else metric)
    ax.set_title(title or f"work-precision: {result.problem} / {result.schedule} ({result.device})", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    _legend_outside(ax)
    return fig


def scatter_samples(ax, x: torch.Tensor, **kw) -> None:
    """Scatter the first two coordinates of a batch of samples (any device or dtype; marker size 3 by default)."""
    x = x.detach().reshape(x.shape[0], -1).to("cpu", torch.float64)
    ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=kw.pop("s", 3), **kw)


def plot_samples(
    result: StudyResult, budget: int | None = None, *, labels: Sequence[str] | None = None, max_points: int = 2000
):
    """Scatter of the final samples (first two coordinates) of each solver at NFE ``budget`` over exact samples."""
    if not result.samples:
        raise ValueError("this study kept no samples (keep_samples=True, or a 2-D problem)")
    budgets = sorted({b for _, b in result.samples})
    budget = budgets[len(budgets) // 2] if budget is None else budget
    labels = [lb for lb in (labels or result.labels) if (lb, budget) in result.samples]
    ncols = min(len(labels), 4) or 1
    nrows = max(math.ceil(len(labels) / ncols), 1)
    fig, axes = new_figure(nrows, ncols, size=(3.2 * ncols, 3.2 * nrows))
    for ax, label in zip(axes.flat, labels):
        if result.target is not None:
            scatter_samples(ax, result.target[:max_points], color="0.75", label="exact")
        scatter_samples(ax, result.samples[(label, budget)][:max_points], color="C3", label=label)
        ax.set_title(f"{short_label(label)}, NFE {budget}", fontsize=9)
        ax.set_aspect("equal")
    for ax in list(axes.flat)[len(labels) :]:
        ax.set_visible(False)
    return fig


def plot_trajectories(
    problem, solver="ddim", nfe: int = 10, *, n: int = 16, seed: int = 0, grid: str = "logsnr", ax=None
):
    """Paths of ``n`` particles of a 2-D problem: the solver's states at its grid points (markers) over the
    reference paths (thin lines, torchdiffeq at the same times refined 8x). States are drawn scaled by
    ``1/sqrt(alpha^2 + sigma^2)`` so that VE and VP problems look alike."""
    from ..reference import probability_flow_reference
    from ..sample import sample
    from .problems import get_problem
    from .specs import parse_solver_spec

    problem = get_problem(problem)
    solver = parse_solver_spec(solver).build()
    if ax is None:
        fig, axes = new_figure(size=(4.8, 4.4))
        ax = axes[0, 0]
    fig = ax.figure
    x_T = problem.start(n, torch.Generator().manual_seed(seed))
    out = sample(
        problem.model(),
        x_T,
        solver=solver,
        steps=max(solver.steps_for_nfe(nfe), 1),
        grid=grid,
        return_trajectory=True,
        generator=torch.Generator().manual_seed(seed + 1),
    )
    assert out.trajectory is not None  # (return_trajectory=True)
    traj = torch.stack(out.trajectory).to(torch.float64)
    fine = torch.stack(
        [torch.linspace(float(a), float(b), 9, dtype=torch.float64)[:-1] for a, b in zip(out.ts[:-1], out.ts[1:])]
    ).flatten()
    fine = torch.cat([fine, out.ts[-1:]])
    ref = probability_flow_reference(problem.model(), x_T, fine, rtol=1e-8, atol=1e-8)

    def scaled(xs, ts):
        a, s = problem.schedule.alpha(ts), problem.schedule.sigma(ts)
        return xs / torch.sqrt(a * a + s * s).reshape(-1, 1, 1)

    ref, traj = scaled(ref, fine), scaled(traj, out.ts)
    for j in range(n):
        ax.plot(ref[:, j, 0].numpy(), ref[:, j, 1].numpy(), lw=0.7, color="0.6")
        ax.plot(traj[:, j, 0].numpy(), traj[:, j, 1].numpy(), "o-", ms=2.5, lw=0.8, color="C0")
    ax.plot([], [], color="0.6", lw=0.7, label="reference (PF-ODE)")
    label = short_label(parse_solver_spec(solver).label)
    ax.plot([], [], "o-", ms=2.5, color="C0", label=f"{label}, NFE {out.nfe}")
    ax.set_aspect("equal")
    ax.legend(fontsize=7)
    ax.set_title(f"trajectories: {problem.name} / {problem.schedule_name}", fontsize=10)
    return fig


def study_figure(
    main: StudyResult,
    order: StudyResult | None = None,
    *,
    budget: int | None = None,
    scatter_labels: Sequence[str] | None = None,
):
    """The summary figure: convergence and local orders of the main study (top row), then the order study's
    convergence (if any) and a scatter of samples of two solvers against exact samples (2-D main problem)."""
    bottom = (order is not None) + bool(main.samples)
    fig, axes = new_figure(1 + (bottom > 0), 2, size=(13.0, 4.2 * (1 + (bottom > 0))), width_ratios=[1.5, 1.0])
    plot_convergence(main, ax=axes[0, 0])
    plot_local_orders(main, ax=axes[0, 1])
    if bottom:
        if order is not None:
            plot_convergence(order, ax=axes[1, 0], title=f"order study: {order.problem} / {order.schedule}")
        else:
            axes[1, 0].set_visible(False)
        if main.samples:
            _samples_panel(axes[1, 1], main, budget, scatter_labels)
        else:
            axes[1, 1].set_visible(False)
    return fig


def _samples_panel(ax, main: StudyResult, budget, scatter_labels) -> None:
    budgets = sorted({b for _, b in main.samples})
    budget = budget if budget in budgets else min(budgets, key=lambda b: abs(b - 10))
    labels = [lb for lb in (scatter_labels or _scatter_pair(main, budget)) if (lb, budget) in main.samples]
    if main.target is not None:
        scatter_samples(ax, main.target, color="0.8", label="exact")
    for label in labels:
        color = f"C{main.labels.index(label) % 10}"
        scatter_samples(ax, main.samples[(label, budget)], color=color, alpha=0.6, label=short_label(label))
    ax.set_aspect("equal")
    ax.set_title(f"samples at NFE {budget}", fontsize=10)
    ax.legend(fontsize=7, markerscale=3)


def _scatter_pair(result: StudyResult, budget: int) -> list[str]:
    """The first solver (usually DDIM) and the one with the smallest error at ``budget``."""
    errs = {r.solver: r.error for r in result.runs if r.nfe_budget == budget and r.error is not None}
    labels = result.labels[:1]
    if errs:
        best = min(errs, key=errs.__getitem__)
        if best not in labels:
            labels.append(best)
    return labels
