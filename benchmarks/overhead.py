"""Per-step overhead of the sampling loop with a zero-cost model.

The model returns a precomputed tensor, so what is timed is everything *around* the network: the loop, the solver's
arithmetic, ``Model.predict``, the finiteness check, plan/grid look-ups (amortised over the steps of one call).
Every registered fixed-step solver is picked up automatically (default options, plus a few named variants), and
compared in the same process with

* a floor: one fused multiply-add per step (``torch.add(x, eps, alpha=c)``) in a bare Python loop;
* diffusers' ``DDIMScheduler``, ``DPMSolverMultistepScheduler`` (2M) and ``UniPCMultistepScheduler`` when diffusers
  is installed: ``set_timesteps`` plus ``.step()`` per step with a precomputed model output.

float32, one thread, ``min`` over repeats of one whole call divided by the number of steps.

Usage::

    python benchmarks/overhead.py              # plain text
    python benchmarks/overhead.py --markdown   # the table of docs/performance.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sde_diffusion import Model, VPLinear, sample  # noqa: E402
from sde_diffusion.solvers import get_solver, registered_solvers  # noqa: E402

SHAPES = ((1, 4, 64, 64), (4, 3, 64, 64))
#: extra variants worth a row of their own (skipped when not registered or not accepted)
VARIANTS = (
    ("ipndm", {"ab_order": 1}),  # DDIM(eta=0) written with lincomb + host_scalars: the first-order reference
    ("pndm", {"warmup": "heun"}),
    ("ipndm", {"ab_order": 2}),
    ("ipndm", {"ab_order": 3}),
    ("dpm_solver++", {"order": 2, "multistep": True}),
    ("dpm_solver++", {"order": 3, "multistep": True}),
    ("dpm_solver", {"order": 2, "multistep": True}),
    ("unipc", {"predictor_order": 2}),
    ("unipc", {"predictor_order": 3}),
    ("deis", {"order": 2}),
    ("deis", {"order": 3}),
)


_SYNC = None  # torch.cuda.synchronize when timing on a GPU


def _best(fn, repeats: int) -> float:
    """Minimum wall time of ``fn()`` over ``repeats`` runs (after two warm-up runs); on a GPU each run ends with a
    device synchronisation, so queued kernels are paid for."""
    fn()
    fn()
    best = float("inf")
    for _ in range(repeats):
        if _SYNC:
            _SYNC()
        t0 = time.perf_counter()
        fn()
        if _SYNC:
            _SYNC()
        best = min(best, time.perf_counter() - t0)
    return best


def solver_specs(only=None) -> list[tuple[str, dict]]:
    """Every registered fixed-step solver with default options, then the extra variants, without duplicates
    (``only``: restrict to these names)."""
    specs, seen = [], set()
    for name, opts in [(n, {}) for n in sorted(registered_solvers())] + list(VARIANTS):
        if only and name not in only:
            continue
        try:
            solver = get_solver(name, **opts)
        except (ValueError, TypeError):
            continue
        if solver.adaptive or solver.key() in seen:
            continue
        seen.add(solver.key())
        specs.append((name, opts))
    return specs


def label(name: str, opts: dict) -> str:
    return name + ("(" + ", ".join(f"{k}={v}" for k, v in opts.items()) + ")" if opts else "")


def kind(solver) -> str:
    if solver.stochastic:
        return "stochastic"
    if solver.memory > 0:
        return "multistep"
    if solver.nfe_per_step == 1 and solver.order == 1:
        return "first-order"
    return "single-step"


def time_floor(x, out, steps, repeats):
    def run():
        y = x
        for _ in range(steps):
            y = torch.add(y, out, alpha=0.5)

    return _best(run, repeats) / steps


def time_ours(model, x, out, name, opts, steps, repeats, check_finite):
    solver = get_solver(name, **opts)
    kw = {}
    if solver.stochastic:
        # pre-drawn normals: the cost of drawing them is not loop overhead (solvers that need extra normals
        # besides the increment fall back to a generator, noted in the table)
        kw["noise"] = torch.randn((steps, *x.shape), dtype=x.dtype, generator=torch.Generator().manual_seed(0))
        kw["noise"] = kw["noise"].to(x.device)
        try:
            sample(model, x, solver=solver, steps=steps, **kw)
        except ValueError:
            kw = {"generator": torch.Generator(device=x.device).manual_seed(0)}
    n0 = model.nfe
    sample(model, x, solver=solver, steps=steps, check_finite=check_finite, **kw)
    nfe = model.nfe - n0
    t = _best(lambda: sample(model, x, solver=solver, steps=steps, check_finite=check_finite, **kw), repeats)
    return t / steps, nfe / steps, "generator" in kw


def diffusers_schedulers():
    try:
        import diffusers
    except ImportError:
        return []
    import logging

    logging.getLogger("diffusers").setLevel(logging.ERROR)
    return [
        ("diffusers DDIMScheduler", lambda: diffusers.DDIMScheduler()),
        ("diffusers DPMSolverMultistepScheduler (2M)", lambda: diffusers.DPMSolverMultistepScheduler(solver_order=2)),
        ("diffusers UniPCMultistepScheduler", lambda: diffusers.UniPCMultistepScheduler()),
    ]


def time_diffusers(make, x, out, steps, repeats):
    sched = make()

    def run():
        sched.set_timesteps(steps)
        y = x
        for t in sched.timesteps:
            y = sched.step(out, t, y, return_dict=False)[0]

    return _best(run, repeats) / steps


def measure(steps: int = 50, repeats: int = 100, shapes=SHAPES, device: str = "cpu", only=None, peers_too=True):
    global _SYNC
    torch.set_num_threads(1)
    _SYNC = torch.cuda.synchronize if device.startswith("cuda") else None
    schedule = VPLinear()
    rows = []  # (label, kind, nfe/step, {shape: (off, on)}, memory)
    floors, peers = {}, {}
    specs = solver_specs(only)
    for shape in shapes:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=g, dtype=torch.float32).to(device)
        out = torch.randn(shape, generator=g, dtype=torch.float32).to(device)
        model = Model(lambda x_, t_, out=out: out, schedule, "eps")
        floors[shape] = time_floor(x, out, steps, repeats)
        for name, opts in specs:
            off, nfe, gen = time_ours(model, x, out, name, opts, steps, repeats, False)
            on, _, _ = time_ours(model, x, out, name, opts, steps, repeats, True)
            solver = get_solver(name, **opts)
            lab = label(name, opts) + (" [generator noise]" if gen else "")
            row = next((r for r in rows if r[0] == lab), None)
            if row is None:
                row = (lab, kind(solver), nfe, {}, solver.memory)
                rows.append(row)
            row[3][shape] = (off, on)
        for lab, make in diffusers_schedulers() if peers_too else []:
            peers.setdefault(lab, {})[shape] = time_diffusers(make, x, out, steps, repeats)
    return {
        "steps": steps,
        "repeats": repeats,
        "shapes": shapes,
        "floor": floors,
        "rows": rows,
        "peers": peers,
        "torch": torch.__version__,
        "device": device,
    }


def _us(v):
    return f"{v * 1e6:.1f}"


def format_table(res, markdown: bool) -> str:
    shapes = res["shapes"]
    floor = res["floor"]
    dpm2m = res["peers"].get("diffusers DPMSolverMultistepScheduler (2M)")
    head = ["solver", "kind", "NFE/step"]
    for s in shapes:
        tag = "x".join(map(str, s))
        head += [f"{tag} us/step (check off / on)", f"{tag} x floor (off / on)"]
        if dpm2m:
            head.append(f"{tag} x diffusers 2M (off)")
    lines = []
    sep = " | "

    def emit(cells):
        lines.append(("| " + sep.join(cells) + " |") if markdown else sep.join(cells))

    emit(head)
    if markdown:
        emit(["---"] * len(head))
    cells = ["floor: torch.add(x, eps, alpha=c)", "-", "-"]
    for s in shapes:
        cells += [_us(floor[s]), "1.00"] + (["-"] if dpm2m else [])
    emit(cells)
    for lab, knd, nfe, t, _ in res["rows"]:
        cells = [f"`{lab}`" if markdown else lab, knd, f"{nfe:.2f}"]
        for s in shapes:
            off, on = t[s]
            cells += [f"{_us(off)} / {_us(on)}", f"{off / floor[s]:.2f} / {on / floor[s]:.2f}"]
            if dpm2m:
                cells.append(f"{off / dpm2m[s]:.2f}")
        emit(cells)
    for lab, t in res["peers"].items():
        cells = [lab, "peer", "1.00"]
        for s in shapes:
            cells += [_us(t[s]), f"{t[s] / floor[s]:.2f}"] + ([f"{t[s] / dpm2m[s]:.2f}"] if dpm2m else [])
        emit(cells)
    return "\n".join(lines)


def targets(res) -> list[str]:
    """Check the stated targets (check_finite off): first-order <= 2x floor; multistep methods of at most 3 steps
    (memory <= 2) <= 3x floor and <= 0.5x diffusers' 2M."""
    out = []
    dpm2m = res["peers"].get("diffusers DPMSolverMultistepScheduler (2M)")
    for lab, knd, _, t, memory in res["rows"]:
        for s in res["shapes"]:
            r = t[s][0] / res["floor"][s]
            if knd == "first-order":
                out.append(f"{lab} {s}: {r:.2f}x floor (target <= 2): {'ok' if r <= 2 else 'MISSED'}")
            elif knd == "multistep" and memory <= 2:
                msg = f"{lab} {s}: {r:.2f}x floor (target <= 3): {'ok' if r <= 3 else 'MISSED'}"
                if dpm2m:
                    q = t[s][0] / dpm2m[s]
                    msg += f"; {q:.2f}x diffusers 2M (target <= 0.5): {'ok' if q <= 0.5 else 'MISSED'}"
                out.append(msg)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=100)
    p.add_argument("--no-targets", action="store_true", help="do not print the target check")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--solvers", nargs="*", help="only these registry names")
    p.add_argument("--no-peers", action="store_true", help="skip diffusers")
    args = p.parse_args(argv)
    res = measure(args.steps, args.repeats, device=args.device, only=args.solvers, peers_too=not args.no_peers)
    print(
        f"torch {res['torch']}, {args.device}, float32, 1 thread, {args.steps} steps, min of {args.repeats} calls; "
        "us per step (check_finite off / on)\n"
    )
    print(format_table(res, args.markdown))
    if not args.no_targets:
        print()
        for line in targets(res):
            print(("- " if args.markdown else "") + line)
    return res


if __name__ == "__main__":
    main()
