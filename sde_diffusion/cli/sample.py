"""``sde-diffusion sample``: sample a built-in problem or a trained checkpoint with one solver."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..sample import DEFAULT_SOLVER
from .common import (
    UsageError,
    add_common,
    add_overwrite,
    available_memory,
    check_grid_solver,
    check_out_dir,
    check_problem,
    format_bytes,
    new_out_dir,
    positive_int,
    progress,
    setup_torch,
    solver_specs,
)

__all__ = ["HELP", "add_arguments", "run", "CHUNK", "BATCH"]

HELP = "sample a built-in problem or a trained checkpoint with one solver; writes samples.pt/.png"

#: the error metric and the plot use the first CHUNK samples
CHUNK = 32768
#: default samples per call of the sampler (--batch-size): a block of consecutive sample indices, the unit that the
#: ranks of a torchrun job share out
BATCH = 1024
OUTPUTS = ("samples.pt", "samples.png")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument(
        "--solver",
        default=DEFAULT_SOLVER,
        help=f"solver configuration, e.g. 'dpm_solver++:order=2' (default {DEFAULT_SOLVER}, as for sample())",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--nfe", type=positive_int, help="NFE budget (default 10)")
    g.add_argument("--steps", type=positive_int, help="number of steps (instead of --nfe)")
    p.add_argument(
        "--analytic-first-step",
        action="store_true",
        help="AMED's analytical first step (arXiv:2312.00094): the first evaluation is the large-noise limit of the "
        "model, not a network call (one NFE less; with --nfe, the steps of one evaluation more)",
    )
    p.add_argument(
        "--n",
        "--num-samples",
        type=positive_int,
        default=2048,
        help="number of samples (default 2048; spell it --num-samples after torchrun, whose own options --n "
        "abbreviates); sample i starts from a state drawn with a seed derived from "
        "(--seed, i), so the samples do not depend on the number of ranks under torchrun; refused when the "
        "samples would not fit in the memory available",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=BATCH,
        help=f"samples per call of the sampler (default {BATCH}): blocks of consecutive indices, shared out among "
        "the ranks under torchrun (a stochastic solver's noise is drawn per block)",
    )
    p.add_argument(
        "--checkpoint",
        help="sample a checkpoint written by `sde-diffusion train` instead of a built-in "
        "problem (its schedule and prediction type come from the checkpoint)",
    )
    p.add_argument(
        "--no-calibration",
        action="store_true",
        help="with --checkpoint: ignore CKPT.calibration.json (written by `sde-diffusion calibrate`), which is "
        "otherwise used (its solver, steps and grid) when its NFE matches --nfe",
    )
    p.add_argument(
        "--out",
        help="output folder (default ./samples-YYYYmmdd-HHMMSS); refused if it already holds samples.pt or "
        "samples.png, unless --overwrite",
    )
    add_overwrite(p)


def _model_source(args):
    """``(model, start, problem or None, shape)``: a built-in problem, or with ``--checkpoint`` a trained network
    (its schedule and prediction type are recorded in the checkpoint; ``problem`` is then ``None``); ``start(n,
    generator)`` draws ``n`` start states in ``--dtype`` on ``--device``; ``shape`` is one sample's shape."""
    import torch

    from ..studies.problems import get_problem

    dtype = getattr(torch, args.dtype)
    if args.checkpoint:
        from ..sdes import ForwardSDE
        from ..training.train import load_checkpoint, load_model

        path = Path(args.checkpoint)
        if not path.is_file():
            raise UsageError(f"--checkpoint: {'not a file' if path.exists() else 'no such file'} {str(path)!r}")
        try:
            state = load_checkpoint(path)
            model = load_model(path, device=args.device, dtype=dtype)
        except (ValueError, RuntimeError, KeyError) as e:
            raise UsageError(f"--checkpoint {str(path)!r}: {e}") from None
        shape = tuple(state.get("data_shape") or ())
        if not shape:
            raise UsageError(f"--checkpoint {str(path)!r} records no data shape")
        sde = ForwardSDE(model.schedule)

        def start(n, gen):
            return sde.prior_sample((n, *shape), gen, dtype=dtype).to(args.device)

        return model, start, None, shape
    check_problem(args)
    problem = get_problem(args.problem, args.schedule)

    def start(n, gen):
        return problem.start(n, gen).to(device=args.device, dtype=dtype)

    return problem.model(), start, problem, tuple(problem.event_shape)


def _check_memory(args, shape) -> None:
    """Refuse an ``--n`` whose samples (kept in float64 on the host, plus one batch in flight) would not fit."""
    numel = 1
    for d in shape:
        numel *= int(d)
    need = args.n * numel * 8
    free = available_memory("cpu")
    if free is not None and need > 0.8 * free:
        raise UsageError(
            f"--n {args.n} needs {format_bytes(need)} for the samples alone ({args.n} x {tuple(shape)} float64) but "
            f"{format_bytes(free)} of memory is available; use a smaller --n"
        )


def run(args) -> int:
    """Sample a built-in problem with one solver; save samples.pt and a scatter plot samples.png; print the NFE,
    the wall time and the distributional error against exact samples. Under ``torchrun`` every rank samples its
    blocks and writes its shard ``samples.shard-R-of-W.pt``; rank 0 writes samples.png and, last, the index
    ``samples.index.json`` (see [`sde_diffusion.distributed`][sde_diffusion.distributed])."""
    from ..distributed import Job

    job = Job(args.device)
    with job:
        args.device = job.device
        return _run(args, job)


def _outputs(job) -> tuple[str, ...]:
    from .sharding import OUTPUTS_SHARDED

    return OUTPUTS_SHARDED if job.distributed else OUTPUTS


def _run(args, job) -> int:
    import torch

    from ..studies.convergence import distribution_metric

    if args.n < 2:
        raise UsageError("--n must be at least 2")
    check_out_dir(args.out, outputs=_outputs(job), overwrite=args.overwrite)
    setup_torch(args)
    (spec,) = solver_specs([args.solver])
    solver = spec.build()
    model, start, problem, shape = _model_source(args)
    check_grid_solver(spec.label, solver, model.schedule, "sample", adaptive_ok=True)
    _check_memory(args, shape)
    grid = args.grid
    if solver.adaptive or solver.own_grid(model.schedule, None, None) is not None:
        if args.steps is not None or args.nfe is not None:
            how = "is adaptive (set its rtol/atol options)" if solver.adaptive else "fixes them (see its options)"
            raise UsageError(f"--nfe/--steps: solver {spec.label!r} chooses its own steps: it {how}")
        if args.analytic_first_step and solver.adaptive:
            raise UsageError(f"--analytic-first-step needs a fixed grid; solver {spec.label!r} is adaptive")
        steps = grid = None
    elif args.steps is not None:
        steps = args.steps
    else:
        nfe = 10 if args.nfe is None else args.nfe
        steps = solver.steps_for_nfe(nfe + 1 if args.analytic_first_step else nfe)
        if steps < 1:
            raise UsageError(f"--nfe {nfe} is too small for solver {spec.label!r}")
    cal = None
    if args.checkpoint and not args.no_calibration and args.steps is None:
        from .calibrate import calibration_for

        cal = calibration_for(args.checkpoint, 10 if args.nfe is None else args.nfe)
    if cal is not None:  # calibrated solver and grid (written by `sde-diffusion calibrate`)
        kw = cal.sample_kwargs(model.schedule)
        solver, steps, grid, afs = kw["solver"], kw["steps"], kw["grid"], kw["analytic_first_step"]
        spec.label = f"{cal.solver} @ {cal.grid}{' +AFS' if afs else ''} (calibrated)"
    else:
        afs = args.analytic_first_step
    from .sharding import sample_part

    def part():
        return sample_part(
            model, start, solver, steps, grid, seed=args.seed, n=args.n, batch_size=args.batch_size, job=job,
            device=args.device, show=None if progress(args) is None else False, analytic_first_step=afs,
        )  # fmt: skip

    if job.distributed:
        out = Path(job.all_gather(str(new_out_dir(args.out, "samples")) if job.is_main else None)[0])
        out.mkdir(parents=True, exist_ok=True)  # every node (one shared folder on a shared file system)
        return _run_sharded(args, job, out, part, spec, problem, model, steps, cal)
    done = part()
    x, ts, nfe, steps, wall = done.x, done.ts, done.nfe, done.steps, done.wall
    shown = x[:CHUNK]  # the metric and the plot
    capped = f" (first {len(shown)} samples)" if len(shown) < len(x) else ""
    out = new_out_dir(args.out, "samples")
    if problem is None:  # a trained checkpoint
        name, sched = Path(args.checkpoint).name, type(model.schedule).__name__
        torch.save(
            {
                "x": x,
                "ts": ts,
                "nfe": nfe,
                "solver": spec.label,
                "checkpoint": str(args.checkpoint),
                "grid": args.grid if cal is None else cal.grid,
                "seed": args.seed,
            },
            out / "samples.pt",
        )
        data, dist_text = _checkpoint_data(args, shown)
        title = f"{name} / {sched}: {spec.label}, NFE {nfe}"
        _plot_samples(shown, data, title, out / "samples.png", label=spec.label)
        print(f"{name} / {sched}: {spec.label}, {steps} steps, NFE {nfe}, {wall * 1e3:.1f} ms{dist_text}{capped}")
        print(f"wrote {out / 'samples.pt'} and {out / 'samples.png'}")
        return 0
    target = problem.target_samples(len(shown), torch.Generator().manual_seed(args.seed + 2))
    metric_name, metric = distribution_metric(problem, target)
    dist = metric(shown)
    torch.save(
        {
            "x": x,
            "ts": ts,
            "nfe": nfe,
            "solver": spec.label,
            "problem": problem.name,
            "schedule": problem.schedule_name,
            "grid": args.grid,
            "seed": args.seed,
        },
        out / "samples.pt",
    )
    _plot_samples(
        shown,
        target,
        f"{problem.name} / {problem.schedule_name}: {spec.label}, NFE {nfe}",
        out / "samples.png",
        label=spec.label,
    )
    print(
        f"{problem.name} / {problem.schedule_name}: {spec.label}, {steps} steps, NFE {nfe}, "
        f"{wall * 1e3:.1f} ms; {metric_name} to exact samples {dist:.3e}{capped}"
    )
    print(f"wrote {out / 'samples.pt'} and {out / 'samples.png'}")
    return 0


def _run_sharded(args, job, out: Path, part, spec, problem, model, steps, cal) -> int:
    """The torchrun path: every rank writes (or resumes) its shard; rank 0 reports on the first
    [`CHUNK`][sde_diffusion.cli.sample.CHUNK]
    samples, writes samples.png and then the index."""
    import torch

    from ..studies.convergence import distribution_metric
    from .sharding import write_sharded

    source = {"checkpoint": str(args.checkpoint)} if problem is None else {"problem": problem.name}
    run = {
        **source,
        "schedule": args.schedule if problem is None else problem.schedule_name,
        "solver": spec.label,
        "steps": steps,
        "nfe": args.nfe,
        "grid": args.grid if cal is None else cal.grid,
        "seed": args.seed,
        "n": args.n,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
    }
    got = write_sharded(job, out, part, run, args.n, min(args.n, CHUNK))
    if got is None:
        return 0
    shown, ts, nfe, steps, wall, resumed, finish = got
    capped = f" (first {len(shown)} samples)" if len(shown) < args.n else ""
    again = f"; resumed the shards of ranks {resumed}" if resumed else ""
    if problem is None:
        name = f"{Path(args.checkpoint).name} / {type(model.schedule).__name__}"
        target, dist_text = _checkpoint_data(args, shown)
    else:
        name = f"{problem.name} / {problem.schedule_name}"
        target = problem.target_samples(len(shown), torch.Generator().manual_seed(args.seed + 2))
        metric_name, metric = distribution_metric(problem, target)
        dist_text = f"; {metric_name} to exact samples {metric(shown):.3e}"
    _plot_samples(shown, target, f"{name}: {spec.label}, NFE {nfe}", out / "samples.png", label=spec.label)
    index = finish()
    print(
        f"{name}: {spec.label}, {steps} steps, NFE {nfe}, {job.world_size} ranks, {wall * 1e3:.1f} ms (slowest "
        f"rank){dist_text}{capped}{again}"
    )
    print(f"wrote {job.world_size} shards, {out / 'samples.png'} and {index}")
    return 0


def _checkpoint_data(args, x):
    """Fresh samples of the checkpoint's training data (2-D sets) and a text with the sliced W2 distance of ``x``
    to them, or ``(None, "")`` for image data."""
    import torch

    from ..studies.metrics import sliced_w2
    from ..training.data import get_dataset
    from ..training.train import load_checkpoint

    state = load_checkpoint(args.checkpoint)
    if not state.get("data") or len(state.get("data_shape") or ()) != 1:
        return None, ""
    sampler = get_dataset(state["data"], **state.get("data_options", {}))
    data = sampler(len(x), torch.Generator().manual_seed(args.seed + 2)).to(torch.float64)
    return data, f"; sliced W2 to fresh {state['data']} data {sliced_w2(x, data):.3e}"


def _plot_samples(x, target, title: str, path: Path, label: str = "samples") -> None:
    """Scatter of the first two coordinates (2-D data), or a grid of the first images (image data)."""
    from ..studies.plots import new_figure, save_figure, scatter_samples

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
    if target is not None:
        scatter_samples(ax, target, color="0.75", label="exact")
    scatter_samples(ax, x, color="C3", label=label)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, markerscale=3)
    save_figure(fig, path)
