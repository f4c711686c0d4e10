"""The ``sde-diffusion`` command line.

Each sub-command lives in a function ``cmd_<name>(args) -> int`` registered in :data:`COMMANDS` with its argument
builder. Errors that are the user's (unknown names, bad options) print one line and exit with status 2 -- never a
traceback: :class:`UsageError` for what the commands check, and argparse's own errors are printed on one line too.

Commands:

* ``schedules`` -- table of the built-in noise schedules;
* ``solvers`` -- every registered solver with its declared order, NFE per step, stochasticity and reference;
* ``study`` -- convergence / order studies on the built-in problems; writes ``study.json`` and ``study.png``;
* ``sample`` -- sample a built-in problem with one solver; writes ``samples.pt`` and ``samples.png``;
* ``optimise-grid`` (alias ``optimize-grid``) -- optimise the time grid of a solver at an NFE budget.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["main", "COMMANDS", "UsageError", "build_parser"]


class UsageError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``prog: error: message``) and exit status 2."""

    def error(self, message: str):  # pragma: no cover - exercised through subprocesses
        self.exit(2, f"{self.prog}: error: {message}\n")


# ---------------------------------------------------------------------------------------------------------------------
# shared argument handling
# ---------------------------------------------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _flatten(lists) -> list[int] | None:
    return None if lists is None else sorted({v for chunk in lists for v in chunk})


def _add_common(p: argparse.ArgumentParser, *, problem: str = "ring") -> None:
    p.add_argument("--problem", default=problem, help=f"built-in problem (default {problem}); see --help of study")
    p.add_argument("--schedule", default="vp-linear", help="vp-linear | vp-cosine | vp-discrete | ve | edm")
    p.add_argument("--grid", default="logsnr", help="time grid: logsnr | time_uniform | time_quadratic | karras")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64", help="dtype of the solvers")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they only show on a terminal)")


def _setup_torch(args) -> None:
    import torch

    torch.set_num_threads(max(int(args.threads), 1))
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {args.device!r} is not available (torch.cuda.is_available() is False)")
    try:
        torch.device(args.device)
    except RuntimeError as e:
        raise UsageError(f"bad device {args.device!r}: {e}") from None


def _check_choice(kind: str, value: str, valid) -> str:
    if value not in valid:
        raise UsageError(f"unknown {kind} {value!r}; valid {kind}s: {', '.join(valid)}")
    return value


def _check_problem(args, *, attr: str = "problem") -> None:
    from .grids import GRIDS
    from .studies.problems import PROBLEMS, SCHEDULES

    _check_choice("problem", getattr(args, attr), list(PROBLEMS))
    _check_choice("schedule", args.schedule, list(SCHEDULES))
    _check_choice("grid", args.grid, list(GRIDS))


def _solver_specs(texts: list[str]) -> list:
    """Parse and build every solver configuration up front, so that a bad name or option is a usage error."""
    from .studies.specs import parse_solver_spec

    specs = []
    for text in texts:
        try:
            spec = parse_solver_spec(text)
            spec.build()
        except (ValueError, TypeError) as e:
            raise UsageError(str(e).replace("\n", " ")) from None
        specs.append(spec)
    return specs


def _progress(args) -> bool | None:
    return False if args.no_progress else None


def _new_out_dir(out: str | None, prefix: str) -> Path:
    if out:
        path = Path(out)
    else:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(f"{prefix}-{stamp}")
        k = 1
        while path.exists():
            path = Path(f"{prefix}-{stamp}-{k}")
            k += 1
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------------------------------


def _add_schedules(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64")


def cmd_schedules(args) -> int:
    """Print a table of the built-in schedules with alpha, sigma and lambda at t_min and t_max."""
    import torch

    from .schedules import EDM, SubVPLinear, VEGeometric, VPCosine, VPDiscrete, VPLinear

    dtype = getattr(torch, args.dtype)
    rows = [
        ("vp-linear", VPLinear()),
        ("vp-cosine", VPCosine()),
        ("vp-discrete", VPDiscrete.from_config({"num_train_timesteps": 1000, "beta_schedule": "linear"})),
        ("subvp-linear", SubVPLinear()),
        ("ve", VEGeometric()),
        ("edm", EDM()),
    ]
    head = f"{'name':<13} {'t':>8} {'alpha':>12} {'sigma':>12} {'lambda':>10}  class"
    print(head)
    print("-" * len(head))
    for name, sch in rows:
        for t in (sch.t_min, sch.t_max):
            tt = torch.tensor(t, dtype=dtype)
            a, s, lam = (float(v) for v in (sch.alpha(tt), sch.sigma(tt), sch.lambda_(tt)))
            print(f"{name:<13} {t:>8.4g} {a:>12.6g} {s:>12.6g} {lam:>10.4f}  {sch!r}")
            name = ""
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# solvers
# ---------------------------------------------------------------------------------------------------------------------


def _add_solvers(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the table as JSON")


def cmd_solvers(args) -> int:
    """Every registered solver (with its default options): order, strong order, NFE per step, memory, reference."""
    from .solvers import registered_solvers
    from .studies.specs import solver_info, solver_option_names

    rows = []
    for name, cls in sorted(registered_solvers().items()):
        try:
            info = solver_info(cls())
        except Exception:  # a solver without defaults for every option: its class attributes
            info = {
                "name": name,
                "options": {},
                "order": float(cls.order),
                "nfe_per_step": int(cls.nfe_per_step),
                "strong_order": None if cls.strong_order is None else float(cls.strong_order),
                "stochastic": bool(cls.stochastic),
                "memory": int(cls.memory),
                "reference": cls.reference,
                "adaptive": bool(getattr(cls, "adaptive", False)),
            }
        info["option_names"] = solver_option_names(cls)
        rows.append(info)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    head = (
        f"{'name':<20} {'order':>5} {'strong':>6} {'NFE/step':>8} {'stochastic':>10} {'memory':>6}  "
        f"{'reference':<18} options"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        strong = "-" if r["strong_order"] is None else f"{r['strong_order']:g}"
        opts = ", ".join(f"{k}={v!r}" for k, v in r["options"].items()) or "-"
        print(
            f"{r['name']:<20} {r['order']:>5g} {strong:>6} {r['nfe_per_step']:>8} "
            f"{'yes' if r['stochastic'] else 'no':>10} {r['memory']:>6}  {r['reference'] or '-':<18} {opts}"
        )
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# study
# ---------------------------------------------------------------------------------------------------------------------

_MAIN_NFE = [5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50]
_ORDER_NFE = [24, 32, 48, 64, 96, 128, 192, 240]
_STOCHASTIC_NFE = [10, 20, 40, 80, 160]
_QUICK = {"nfe": [5, 10, 20], "order_nfe": [16, 32, 64], "n": 128, "rtol": 1e-8}


def _add_study(p: argparse.ArgumentParser) -> None:
    from .studies.problems import PROBLEMS

    _add_common(p)
    p.add_argument(
        "--solvers",
        nargs="+",
        metavar="SOLVER",
        help="solver configurations, e.g. ddim heun 'dpm_solver++:order=3,multistep=true' "
        "(default: ddim, heun and the registered high-order solvers)",
    )
    p.add_argument("--nfe", type=_int_list, nargs="+", help=f"NFE budgets (default {_MAIN_NFE})")
    p.add_argument("--n", type=int, help="batch size (default 512; 128 with --quick)")
    p.add_argument("--reference", default="auto", help="auto | exact | torchdiffeq | none")
    p.add_argument("--rtol", type=float, help="torchdiffeq reference tolerance (default 1e-10; 1e-8 with --quick)")
    p.add_argument("--repeats", type=int, default=1, help="wall time = minimum over this many runs (default 1)")
    p.add_argument(
        "--order-problem",
        default="gauss2d",
        help="problem of the order study in the asymptotic range, or 'none' (default gauss2d)",
    )
    p.add_argument("--order-nfe", type=_int_list, nargs="+", help=f"NFE of the order study (default {_ORDER_NFE})")
    p.add_argument(
        "--stochastic",
        action="store_true",
        help="add a study of the stochastic solvers on --order-problem, n=1024 (strong and distributional errors)",
    )
    p.add_argument("--figures", action="store_true", help="also write one PNG per study, samples and trajectories")
    p.add_argument("--quick", action="store_true", help="a reduced study for CI (a few seconds)")
    p.add_argument("--out", help="output folder (default ./study-YYYYmmdd-HHMMSS)")
    p.epilog = "problems: " + "; ".join(f"{k} ({v.description})" for k, v in PROBLEMS.items())


def _stochastic_solvers() -> list[str]:
    """``ddim:eta=1`` and every registered stochastic solver with default options (predictor-corrector excluded:
    its Langevin corrector is not a discretisation of the reverse SDE)."""
    from .solvers import registered_solvers

    out = ["ddim:eta=1"]
    for name, cls in sorted(registered_solvers().items()):
        try:
            solver = cls()
        except Exception:
            continue
        if solver.stochastic and name != "pc" and name not in out:
            out.append(name)
    return out


def cmd_study(args) -> int:
    """Run the main study (solvers x NFE on --problem), the order study and optionally the stochastic one; print
    tables with fitted orders; write study.json and study.png into --out."""
    from .studies.problems import PROBLEMS
    from .studies.specs import default_solvers

    _check_problem(args)
    if args.order_problem != "none":
        _check_choice("problem", args.order_problem, list(PROBLEMS))
    _check_choice("reference", args.reference, ["auto", "exact", "torchdiffeq", "none"])
    quick = _QUICK if args.quick else {}
    n = args.n if args.n is not None else quick.get("n", 512)
    rtol = args.rtol if args.rtol is not None else quick.get("rtol", 1e-10)
    if n < 2 or not rtol > 0:
        raise UsageError("--n must be at least 2 and --rtol positive")
    _setup_torch(args)
    specs = _solver_specs(args.solvers or default_solvers())
    nfe = _flatten(args.nfe) or quick.get("nfe", _MAIN_NFE)
    order_nfe = _flatten(args.order_nfe) or quick.get("order_nfe", _ORDER_NFE)
    out = _new_out_dir(args.out, "study")
    common = dict(
        grid=args.grid,
        seed=args.seed,
        dtype=args.dtype,
        device=args.device,
        progress=_progress(args),
        repeats=max(args.repeats, 1),
    )
    t0 = time.perf_counter()
    studies = {
        "main": _run_study(args.problem, args.schedule, specs, nfe, n=n, rtol=rtol, reference=args.reference, **common)
    }
    if args.order_problem != "none":
        studies["order"] = _run_study(
            args.order_problem,
            args.schedule,
            specs,
            order_nfe,
            n=min(n, 256),
            rtol=rtol,
            reference=args.reference,
            **common,
        )
    if args.stochastic:
        sto_nfe = quick.get("nfe", _STOCHASTIC_NFE)
        studies["stochastic"] = _run_study(
            args.order_problem if args.order_problem != "none" else "gauss2d",
            args.schedule,
            _solver_specs(_stochastic_solvers()),
            sto_nfe,
            n=128 if args.quick else 1024,
            rtol=rtol,
            reference=args.reference,
            sde_substeps=20 if args.quick else 50,
            **common,
        )
    elapsed = time.perf_counter() - t0
    for name, res in studies.items():
        print(f"## {name} study\n")
        print(res.to_markdown())
        if name == "stochastic":
            print()
            print(res.to_markdown("dist_error"))
        print()
    _write_study(out, studies, args, elapsed)
    print(f"studies ran in {elapsed:.1f} s; wrote {out / 'study.json'} and {out / 'study.png'}")
    return 0


def _run_study(problem, schedule, specs, nfe, **kw):
    from .studies.convergence import convergence_study

    return convergence_study(problem, specs, nfe, schedule=schedule, **kw)


def _write_study(out: Path, studies: dict, args, elapsed: float) -> None:
    from . import __version__
    from .studies.plots import (
        new_figure,
        plot_convergence,
        plot_samples,
        plot_trajectories,
        plot_work_precision,
        save_figure,
        study_figure,
    )
    from .studies.report import bundle

    meta = {
        "sde_diffusion_version": __version__,
        "command": "sde-diffusion " + " ".join(sys.argv[1:]),
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 3),
    }
    (out / "study.json").write_text(json.dumps(bundle(studies, **meta), indent=2))
    save_figure(study_figure(studies["main"], studies.get("order")), out / "study.png")
    if not args.figures:
        return
    for name, res in studies.items():
        save_figure(plot_convergence(res), out / f"{name}_error.png")
        if res.dist_metric is not None and name != "main":
            save_figure(plot_convergence(res, metric="dist_error"), out / f"{name}_dist_error.png")
    save_figure(plot_work_precision(studies["main"]), out / "main_work_precision.png")
    main = studies["main"]
    if main.samples:
        budget = 10 if 10 in main.budgets else main.budgets[len(main.budgets) // 2]
        save_figure(plot_samples(main, budget), out / "samples.png")
        errs = {r.solver: r.error for r in main.runs if r.nfe_budget == budget and r.error is not None}
        best = min(errs, key=errs.get) if errs else main.labels[0]
        pair = [main.labels[0]] + ([best] if best != main.labels[0] else [])
        fig, axes = new_figure(1, len(pair), size=(4.8 * len(pair), 4.4))
        for ax, label in zip(axes.flat, pair):
            plot_trajectories(_problem(args), label, budget, seed=args.seed, grid=args.grid, ax=ax)
        save_figure(fig, out / "trajectories.png")


def _problem(args):
    from .studies.problems import get_problem

    return get_problem(args.problem, args.schedule)


# ---------------------------------------------------------------------------------------------------------------------
# sample
# ---------------------------------------------------------------------------------------------------------------------


def _add_sample(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    p.add_argument("--solver", default="ddim", help="solver configuration, e.g. 'dpm_solver++:order=2'")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--nfe", type=int, help="NFE budget (default 10)")
    g.add_argument("--steps", type=int, help="number of steps (instead of --nfe)")
    p.add_argument("--n", type=int, default=2048, help="number of samples (default 2048)")
    p.add_argument(
        "--checkpoint",
        help="sample a checkpoint written by `sde-diffusion train` instead of a built-in "
        "problem (its schedule and prediction type come from the checkpoint)",
    )
    p.add_argument("--out", help="output folder (default ./samples-YYYYmmdd-HHMMSS)")


def _model_source(args):
    """``(model, x_T, problem or None)``: a built-in problem, or with ``--checkpoint`` a trained network (its
    schedule and prediction type are recorded in the checkpoint; ``problem`` is then ``None``)."""
    import torch

    from .studies.problems import get_problem

    if args.checkpoint:
        from .sdes import ForwardSDE
        from .train import load_checkpoint, load_model

        path = Path(args.checkpoint)
        if not path.is_file():
            raise UsageError(f"--checkpoint: no such file {str(path)!r}")
        try:
            state = load_checkpoint(path)
            model = load_model(path, device=args.device, dtype=getattr(torch, args.dtype))
        except (ValueError, RuntimeError, KeyError) as e:
            raise UsageError(f"--checkpoint {str(path)!r}: {e}") from None
        shape = tuple(state.get("data_shape") or ())
        if not shape:
            raise UsageError(f"--checkpoint {str(path)!r} records no data shape")
        x_T = ForwardSDE(model.schedule).prior_sample(
            (args.n, *shape), torch.Generator().manual_seed(args.seed), dtype=getattr(torch, args.dtype)
        )
        return model, x_T.to(args.device), None
    _check_problem(args)
    problem = get_problem(args.problem, args.schedule)
    x_T = problem.start(args.n, torch.Generator().manual_seed(args.seed))
    return problem.model(), x_T.to(device=args.device, dtype=getattr(torch, args.dtype)), problem


def cmd_sample(args) -> int:
    """Sample a built-in problem with one solver; save samples.pt and a scatter plot samples.png; print the NFE,
    the wall time and the distributional error against exact samples."""
    import torch

    from .sample import sample
    from .studies.convergence import _dist_metric
    from .studies.specs import steps_for_nfe

    if args.n < 2:
        raise UsageError("--n must be at least 2")
    _setup_torch(args)
    (spec,) = _solver_specs([args.solver])
    solver = spec.build()
    model, x_T, problem = _model_source(args)
    if args.steps is not None:
        if args.steps < 1:
            raise UsageError("--steps must be a positive integer")
        steps = args.steps
    else:
        nfe = 10 if args.nfe is None else args.nfe
        steps = steps_for_nfe(solver, nfe) if nfe >= 1 else 0
        if steps < 1:
            raise UsageError(f"--nfe {nfe} is too small for solver {spec.label!r}")
    gen = torch.Generator(device=args.device).manual_seed(args.seed + 1)
    t0 = time.perf_counter()
    res = sample(model, x_T, solver=solver, steps=steps, grid=args.grid, generator=gen if solver.stochastic else None)
    wall = time.perf_counter() - t0
    x = res.x.detach().to("cpu", torch.float64)
    out = _new_out_dir(args.out, "samples")
    if problem is None:  # a trained checkpoint
        name, sched = Path(args.checkpoint).name, type(model.schedule).__name__
        torch.save(
            {
                "x": x,
                "ts": res.ts,
                "nfe": res.nfe,
                "solver": spec.label,
                "checkpoint": str(args.checkpoint),
                "grid": args.grid,
                "seed": args.seed,
            },
            out / "samples.pt",
        )
        data, dist_text = _checkpoint_data(args, x)
        _plot_samples(x, data, f"{name} / {sched}: {spec.label}, NFE {res.nfe}", out / "samples.png", label=spec.label)
        print(f"{name} / {sched}: {spec.label}, {steps} steps, NFE {res.nfe}, {wall * 1e3:.1f} ms{dist_text}")
        print(f"wrote {out / 'samples.pt'} and {out / 'samples.png'}")
        return 0
    target = problem.target_samples(args.n, torch.Generator().manual_seed(args.seed + 2))
    metric_name, metric = _dist_metric(problem, target)
    dist = metric(x)
    torch.save(
        {
            "x": x,
            "ts": res.ts,
            "nfe": res.nfe,
            "solver": spec.label,
            "problem": problem.name,
            "schedule": problem.schedule_name,
            "grid": args.grid,
            "seed": args.seed,
        },
        out / "samples.pt",
    )
    _plot_samples(
        x,
        target,
        f"{problem.name} / {problem.schedule_name}: {spec.label}, NFE {res.nfe}",
        out / "samples.png",
        label=spec.label,
    )
    print(
        f"{problem.name} / {problem.schedule_name}: {spec.label}, {steps} steps, NFE {res.nfe}, "
        f"{wall * 1e3:.1f} ms; {metric_name} to exact samples {dist:.3e}"
    )
    print(f"wrote {out / 'samples.pt'} and {out / 'samples.png'}")
    return 0


def _checkpoint_data(args, x):
    """Fresh samples of the checkpoint's training data (2-D sets) and a text with the sliced W2 distance of ``x``
    to them, or ``(None, "")`` for image data."""
    import torch

    from .data import get_dataset
    from .studies.metrics import sliced_w2
    from .train import load_checkpoint

    state = load_checkpoint(args.checkpoint)
    if not state.get("data") or len(state.get("data_shape") or ()) != 1:
        return None, ""
    sampler = get_dataset(state["data"], **state.get("data_options", {}))
    data = sampler(len(x), torch.Generator().manual_seed(args.seed + 2)).to(torch.float64)
    return data, f"; sliced W2 to fresh {state['data']} data {sliced_w2(x, data):.3e}"


def _plot_samples(x, target, title: str, path: Path, label: str = "samples") -> None:
    """Scatter of the first two coordinates (2-D data), or a grid of the first images (image data)."""
    from .studies.plots import new_figure, save_figure

    if x.ndim == 4:  # images (B, C, H, W): a grid of up to 8 x 8
        k = min(8, int(len(x) ** 0.5))
        fig, axes = new_figure(nrows=k, ncols=k, size=(1.0 * k, 1.0 * k))
        for i, ax in enumerate(axes.flat):
            ax.imshow(x[i, 0].clamp(-1, 1).numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.set_axis_off()
        fig.suptitle(title, fontsize=8)
        save_figure(fig, path)
        return
    fig, axes = new_figure(size=(4.8, 4.6))
    ax = axes[0, 0]
    flat = x.reshape(len(x), -1)
    if target is not None:
        ax.scatter(target[:, 0].numpy(), target[:, 1].numpy(), s=3, color="0.75", label="exact")
    ax.scatter(flat[:, 0].numpy(), flat[:, 1].numpy(), s=3, color="C3", label=label)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, markerscale=3)
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------------------------------


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        default="ring",
        help="data set: ring | moons | swiss_roll | checkerboard | shapes | digits (default ring)",
    )
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps (default 2000)")
    p.add_argument("--out", default="run", help="output folder; the checkpoint is OUT/ckpt.pt (default ./run)")
    p.add_argument("--schedule", default="vp-linear", help="vp-linear | vp-cosine | vp-discrete | ve | edm")
    p.add_argument("--prediction", default="eps", choices=["eps", "x0", "v", "score"])
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (0: only at the end)")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if OUT/ckpt.pt exists")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (mixed precision on cuda)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it only shows on a terminal)")


def cmd_train(args) -> int:
    """Train a score network (an MLP for 2-D data, a small UNet for images) and write OUT/ckpt.pt."""
    import torch

    from .data import DATASETS
    from .nets import MLPScoreNet, UNet
    from .studies.problems import SCHEDULES, get_schedule
    from .train import train

    _setup_torch(args)
    _check_choice("data set", args.data, sorted(DATASETS))
    _check_choice("schedule", args.schedule, list(SCHEDULES))
    for name in ("steps", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer")
    if not args.lr > 0:
        raise UsageError("--lr must be positive")
    torch.manual_seed(args.seed)
    images = args.data in ("shapes", "digits")
    net = UNet(in_channels=1) if images else MLPScoreNet(dim=2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = train(
        net.to(torch.float32),
        get_schedule(args.schedule),
        args.data,
        prediction=args.prediction,
        checkpoint=out / "ckpt.pt",
        resume=not args.no_resume,
        device=args.device,
        progress=_progress(args),
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
    )
    tail = res.losses[-min(100, len(res.losses)) :]
    print(
        f"trained {args.data} for {res.step} steps in {time.perf_counter() - t0:.1f} s; "
        f"mean loss of the last {len(tail)} steps {sum(tail) / max(len(tail), 1):.4f}"
    )
    print(f"wrote {res.checkpoint}")
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# optimise-grid
# ---------------------------------------------------------------------------------------------------------------------


def _add_optimise_grid(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    p.add_argument("--solver", default="ddim", help="deterministic solver configuration")
    p.add_argument("--nfe", type=int, default=10, help="NFE budget (default 10)")
    p.add_argument("--pilot", type=int, default=256, help="pilot batch size (default 256)")
    p.add_argument("--heldout", type=int, default=1024, help="held-out batch size (default 1024)")
    p.add_argument("--max-evals", type=int, default=1500, help="largest number of solves in the search")
    p.add_argument("--quick", action="store_true", help="small batches and few evaluations (for CI)")
    p.add_argument("--out", help="write the result as JSON to this file")


def cmd_optimise_grid(args) -> int:
    """Optimise the time grid of a solver at an NFE budget on a pilot batch; report the held-out error."""
    from .studies.grid_optimizer import optimise_grid

    _check_problem(args)
    _setup_torch(args)
    (spec,) = _solver_specs([args.solver])
    if spec.build().stochastic:
        raise UsageError(f"solver {spec.label!r} is stochastic; optimise-grid needs a deterministic solver")
    if min(args.nfe, args.pilot, args.heldout, args.max_evals) < 1:
        raise UsageError("--nfe, --pilot, --heldout and --max-evals must be positive")
    pilot, heldout, max_evals = (32, 128, 40) if args.quick else (args.pilot, args.heldout, args.max_evals)
    try:
        res = optimise_grid(
            args.problem,
            spec,
            args.nfe,
            schedule=args.schedule,
            init=args.grid,
            pilot=pilot,
            heldout=heldout,
            seed=args.seed,
            max_evals=max_evals,
            rtol=1e-8 if args.quick else 1e-10,
            device=args.device,
            dtype=args.dtype,
            progress=_progress(args),
        )
    except ValueError as e:
        if "too small" in str(e):
            raise UsageError(str(e)) from None
        raise
    print(
        f"{res.problem} / {res.schedule}: {res.solver}, NFE budget {res.nfe} ({res.steps} steps), "
        f"{res.evaluations} solves"
    )
    print(f"pilot RMS error     {res.init:<13} {res.pilot_error_init:.3e}  optimised {res.pilot_error:.3e}")
    print(
        f"held-out RMS error  {res.init:<13} {res.heldout_error_init:.3e}  optimised {res.heldout_error:.3e}  "
        f"({res.improvement:.2f}x)"
    )
    print("grid t: " + ", ".join(f"{t:.10g}" for t in res.grid.tolist()))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(res.to_json())
        print(f"wrote {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------------------------------

COMMANDS: dict[str, tuple[Callable, Callable, str]] = {
    "schedules": (_add_schedules, cmd_schedules, "table of the built-in noise schedules"),
    "solvers": (_add_solvers, cmd_solvers, "registered solvers with order, NFE per step, stochasticity, reference"),
    "study": (_add_study, cmd_study, "convergence and order studies; writes study.json and study.png"),
    "sample": (
        _add_sample,
        cmd_sample,
        "sample a built-in problem or a trained checkpoint with one solver; writes samples.pt/.png",
    ),
    "train": (_add_train, cmd_train, "train a score network on a synthetic data set; writes OUT/ckpt.pt"),
    "optimise-grid": (_add_optimise_grid, cmd_optimise_grid, "optimise the time grid of a solver at an NFE budget"),
}
_ALIASES = {"optimise-grid": ["optimize-grid"]}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sde-diffusion",
        description="Diffusion models as SDEs and probability-flow ODEs: solvers, order studies, oracles.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (add_args, _, help_) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_, description=help_, aliases=_ALIASES.get(name, [])))
    return parser


def _canonical(command: str) -> str:
    for name, aliases in _ALIASES.items():
        if command in aliases:
            return name
    return command


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    command = _canonical(args.command)
    _, run, _ = COMMANDS[command]
    try:
        return int(run(args) or 0)
    except UsageError as e:
        print(f"sde-diffusion {command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
