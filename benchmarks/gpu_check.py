"""GPU check of every solver on a learned network (also runs on CPU at a small size; CI does that).

1. Train (briefly) a small UNet on procedural 16x16 shapes with :func:`sde_diffusion.training.train.train`.
2. For every deterministic fixed-step solver at NFE 10/20/50: error of ``sample`` against the torchdiffeq dopri5
   reference of the *same network* (float64 reference; solver runs in float32 and float64), time per NFE against
   the bare model time, and the loop run under ``torch.cuda.set_sync_debug_mode("error")`` (``sync_debug=True``):
   a hidden host synchronisation raises and is reported.
3. For the stochastic solvers: strong error against torchsde (srk, fine step) on the same Brownian path.

Writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out`` and prints the table.

    python benchmarks/gpu_check.py --device cuda --out results/
    python benchmarks/gpu_check.py --device cpu --small --out /tmp/x      # seconds, for CI
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sde_diffusion as sd  # noqa: E402
from sde_diffusion.reference import brownian_path, probability_flow_reference, reverse_sde_reference  # noqa: E402
from sde_diffusion.training.data import shapes  # noqa: E402
from sde_diffusion.training.nets import UNet  # noqa: E402
from sde_diffusion.training.train import train  # noqa: E402

SIZES = {
    # name: (image size, unet kwargs, train steps, batch, sample batch, NFE list, ref tol, sde dt)
    "full": dict(
        size=16,
        unet=dict(base_channels=32, channel_mults=(1, 2)),
        steps=1500,
        batch=128,
        n=16,
        nfe=(10, 20, 50),
        tol=1e-7,
        sde_dt=2e-3,
    ),
    "small": dict(
        size=8,
        unet=dict(base_channels=8, channel_mults=(1, 2), groups=4),
        steps=5,
        batch=8,
        n=2,
        nfe=(6, 12),
        tol=1e-5,
        sde_dt=2e-2,
    ),
}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeats=3):
    best, out = math.inf, None
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def _solver_configs():
    """Every registered fixed-step solver with default options, plus the orders of the order-parametrised ones."""
    configs = []
    for name in sorted(sd.registered_solvers()):
        try:
            base = sd.get_solver(name)
        except Exception:  # noqa: BLE001 - a solver that needs options is listed with them below
            base = None
        if base is not None and (base.adaptive or base.direction != "backward"):
            continue
        seen = set()
        for opts in ({}, {"order": 1}, {"order": 2}, {"order": 3}):
            try:
                s = sd.get_solver(name, **opts)
            except Exception:  # noqa: BLE001 - no such option / order for this solver
                continue
            if s.adaptive or s.key() in seen:
                continue
            seen.add(s.key())
            configs.append((name, opts, s))
    return configs


def run(device: str, size: str, out: Path, seed: int = 0) -> dict:
    dev = torch.device(device)
    cfg = SIZES[size]
    torch.manual_seed(seed)
    schedule = sd.VPLinear()
    net = UNet(in_channels=1, **cfg["unet"]).to(dev)
    t0 = time.perf_counter()
    result = train(
        net,
        schedule,
        lambda n, g: shapes(n, g, size=cfg["size"]),
        steps=cfg["steps"],
        batch_size=cfg["batch"],
        lr=2e-3,
        progress=False,
        device=dev,
    )
    train_s = time.perf_counter() - t0
    print(f"trained {cfg['steps']} steps in {train_s:.1f} s", flush=True)
    ema = result.ema_net if hasattr(result, "ema_net") else net
    ema.eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    nets = {torch.float32: ema.float(), torch.float64: _copy(ema).double()}
    models = {dt: sd.Model(n, schedule, "eps") for dt, n in nets.items()}

    g = torch.Generator().manual_seed(seed)
    x_T64 = (
        sd.ForwardSDE(schedule).prior_sample((cfg["n"], 1, cfg["size"], cfg["size"]), g, dtype=torch.float64).to(dev)
    )
    ts = [schedule.t_max, schedule.t_min]
    with torch.no_grad():
        ref_s, ref = _timed(
            lambda: probability_flow_reference(models[torch.float64], x_T64, ts, rtol=cfg["tol"], atol=cfg["tol"])[-1],
            dev,
            repeats=1,
        )
        ref_lo = probability_flow_reference(
            models[torch.float64], x_T64, ts, rtol=cfg["tol"] * 100, atol=cfg["tol"] * 100
        )[-1]
    ref_accuracy = float((ref - ref_lo).pow(2).mean().sqrt())

    # bare model time per call (float32)
    x32 = x_T64.float()
    tvec = torch.full((cfg["n"],), 0.5, device=dev)
    with torch.no_grad():
        bare_s, _ = _timed(lambda: [nets[torch.float32](x32, tvec) for _ in range(20)], dev)
    bare = bare_s / 20

    rows = []
    for name, opts, solver in _solver_configs():
        if solver.stochastic:
            continue
        for nfe in cfg["nfe"]:
            row = {"solver": name, "options": opts, "nfe_budget": nfe}
            for dt in (torch.float32, torch.float64):
                key = "fp32" if dt == torch.float32 else "fp64"
                try:
                    with torch.no_grad():
                        secs, res = _timed(
                            lambda s=solver, d=dt, k=nfe: sd.sample(
                                models[d], x_T64.to(d), solver=s, steps=max(1, s.steps_for_nfe(k)), sync_debug=True
                            ),
                            dev,
                        )
                    err = float((res.x.double() - ref).pow(2).mean().sqrt())
                    row[f"err_{key}"] = err
                    row["nfe"] = res.nfe
                    if dt == torch.float32:
                        row["ms_per_nfe"] = 1e3 * secs / max(res.nfe, 1)
                        row["overhead_vs_model"] = (secs / max(res.nfe, 1)) / bare
                    row["sync_free"] = True
                except RuntimeError as e:  # sync_debug raises RuntimeError on a synchronising call
                    row[f"err_{key}"] = None
                    row["sync_free"] = "synchroniz" not in str(e)
                    row["error"] = str(e).splitlines()[0][:200]
            rows.append(row)
            print(
                f"  {name} {opts} nfe={nfe}: err fp32 {row.get('err_fp32')} sync_free {row.get('sync_free')}",
                flush=True,
            )

    # stochastic solvers: strong error against torchsde on one Brownian path
    sde_rows = []
    xf = x_T64.reshape(cfg["n"], -1)
    bm = brownian_path(xf, schedule.t_min, schedule.t_max, seed=seed)
    with torch.no_grad():
        sde_s, sde_ref = _timed(
            lambda: reverse_sde_reference(models[torch.float64], x_T64, ts, bm, dt=cfg["sde_dt"])[-1], dev, repeats=1
        )
    for name, opts, solver in _solver_configs():
        if not solver.stochastic:
            continue
        for nfe in cfg["nfe"]:
            row = {"solver": name, "options": opts, "nfe_budget": nfe}
            try:
                with torch.no_grad():
                    res = sd.sample(
                        models[torch.float64],
                        x_T64,
                        solver=solver,
                        steps=max(1, solver.steps_for_nfe(nfe)),
                        grid="time_uniform",
                        noise=bm,
                        generator=torch.Generator(device=dev).manual_seed(1),
                        sync_debug=False,
                    )
                row["strong_err"] = float((res.x - sde_ref).pow(2).mean().sqrt())
                row["ref_rms"] = float(sde_ref.pow(2).mean().sqrt())
                row["nfe"] = res.nfe
            except Exception as e:  # noqa: BLE001 - reported in the table
                row["error"] = f"{type(e).__name__}: {str(e)[:160]}"
            sde_rows.append(row)

    report = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "size": size,
        "train_seconds": train_s,
        "final_loss": float(result.losses[-1]) if getattr(result, "losses", None) else None,
        "reference_seconds": ref_s,
        "reference_rms_change_tol_x100": ref_accuracy,
        "sde_reference_seconds": sde_s,
        "bare_model_ms": 1e3 * bare,
        "ode": rows,
        "sde": sde_rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    md = _markdown(report)
    (out / "gpu_check.md").write_text(md)
    print(md)
    return report


def _copy(module):
    import copy

    return copy.deepcopy(module)


def _fmt(v, spec=".2e"):
    return "—" if v is None else format(v, spec)


def _markdown(r: dict) -> str:
    lines = [
        f"device: {r['device']}, torch {r['torch']}, size {r['size']}; training {r['train_seconds']:.1f} s; "
        f"bare model {r['bare_model_ms']:.3f} ms/call; dopri5 reference {r['reference_seconds']:.1f} s "
        f"(RMS change at 100x looser tolerance {r['reference_rms_change_tol_x100']:.1e})",
        "",
        "| solver | options | NFE | RMS err fp32 | RMS err fp64 | ms/NFE | time/NFE ÷ model | sync-free |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in r["ode"]:
        lines.append(
            f"| {row['solver']} | {row['options'] or ''} | {row.get('nfe', row['nfe_budget'])} | "
            f"{_fmt(row.get('err_fp32'))} | {_fmt(row.get('err_fp64'))} | {_fmt(row.get('ms_per_nfe'), '.3f')} | "
            f"{_fmt(row.get('overhead_vs_model'), '.2f')} | {row.get('sync_free')} {row.get('error', '')} |"
        )
    lines += [
        "",
        "| stochastic solver | options | NFE | strong RMS err vs torchsde | RMS of reference |",
        "|---|---|---:|---:|---:|",
    ]
    for row in r["sde"]:
        lines.append(
            f"| {row['solver']} | {row['options'] or ''} | {row.get('nfe', row['nfe_budget'])} | "
            f"{_fmt(row.get('strong_err'))} {row.get('error', '')} | {_fmt(row.get('ref_rms'))} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--small", action="store_true", help="tiny sizes (CPU smoke run)")
    p.add_argument("--out", type=Path, default=Path("gpu_check_out"))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.set_num_threads(1) if a.device == "cpu" else None
    run(a.device, "small" if a.small else "full", a.out, a.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
