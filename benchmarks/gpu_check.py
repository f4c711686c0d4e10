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

``--cifar-unet`` runs the second check instead (:func:`run_cifar_unet`): a diffusers ``UNet2DModel`` of the
DDPM-CIFAR10 size (35.7M parameters, built from the config values, nothing downloaded) trained briefly on coloured
32x32 procedural shapes and digits, wrapped with :func:`sde_diffusion.interop.diffusers.diffusers_model` on the
DDPM ``VPDiscrete`` schedule, and run in fp32 / fp16 / bf16 weights (state float32): every fixed-step solver's time
per NFE over the bare network's forward time (target 1.05 on CUDA), the loop under ``sync_debug=True`` (CUDA), and the
RMS error against the dopri5 reference of the same weights. Writes ``cifar_unet.json`` and ``cifar_unet.md``. Needs
``diffusers``. The one command on a CUDA machine (about 5 minutes on an H100-class GPU):

    python benchmarks/gpu_check.py --device cuda --cifar-unet --out benchmarks/results/
    python benchmarks/gpu_check.py --device cpu --cifar-unet --small --out /tmp/x   # tiny UNet, seconds
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
from sde_diffusion.training.data import digits, shapes  # noqa: E402
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
    return _write(report, out, "gpu_check", _markdown(report))


def _write(report: dict, out: Path, stem: str, md: str) -> dict:
    """Write ``stem.json`` and ``stem.md`` into ``out``, print the markdown, return the report."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (out / f"{stem}.md").write_text(md)
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


# ---------------------------------------------------------------------------------------------------------------------
# DDPM-CIFAR10-size diffusers UNet in fp16 / bf16
# ---------------------------------------------------------------------------------------------------------------------

# The scheduler config of google/ddpm-cifar10-32 (Ho et al., arXiv:2006.11239): linear betas 1e-4 .. 0.02, N = 1000.
DDPM_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
}
_DDPM_DOWN = ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D")
_DDPM_UP = ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")

CIFAR_SIZES = {
    # the UNet2DModel config of google/ddpm-cifar10-32 (35.7M parameters) and the run's sizes
    "full": dict(
        unet=dict(sample_size=32, block_out_channels=(128, 256, 256, 256), layers_per_block=2, norm_num_groups=32),
        precisions=("fp32", "fp16", "bf16"),
        steps=3000,
        batch=128,
        n=16,
        nfe=(10, 20, 50),
        tol=1e-6,
        ref_dtype=torch.float32,
        repeats=3,
    ),
    # same architecture family (4 levels, attention at the second), tiny widths, 1 layer per block
    "small": dict(
        unet=dict(sample_size=8, block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4),
        precisions=("fp16", "bf16"),
        steps=3,
        batch=4,
        n=2,
        nfe=(3,),
        tol=1e-4,
        ref_dtype=torch.float64,
        repeats=1,
    ),
}
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def ddpm_cifar10_unet(
    sample_size: int = 32, block_out_channels=(128, 256, 256, 256), layers_per_block: int = 2, norm_num_groups: int = 32
):
    """A diffusers ``UNet2DModel`` with the architecture of the DDPM CIFAR-10 model (random weights; the defaults are
    its config values)."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        layers_per_block=layers_per_block,
        block_out_channels=tuple(block_out_channels),
        down_block_types=_DDPM_DOWN,
        up_block_types=_DDPM_UP,
        norm_num_groups=norm_num_groups,
    )


def coloured_shapes_and_digits(n: int, generator: torch.Generator | None = None, *, size: int = 32) -> torch.Tensor:
    """``(n, 3, size, size)`` images in ``[-1, 1]``: half procedural shapes, half digits, each in a random colour
    ``c`` in ``[0, 1]^3`` on black (pixel ``-1 + 2 w c`` with ``w`` the grey coverage in ``[0, 1]``)."""
    k = n // 2
    grey = torch.cat([shapes(n - k, generator, size=size), digits(k, generator, size=size)]) if k else None
    grey = shapes(n, generator, size=size) if grey is None else grey
    dev = generator.device if generator is not None else grey.device
    colour = torch.rand((n, 3, 1, 1), generator=generator, device=dev).to(grey)
    return -1.0 + (grey + 1.0) * colour


class TimeInputUNet(torch.nn.Module):
    """``fn(x, t)`` over a diffusers UNet, fed the same timestep label ``N t - 1`` as ``diffusers_model`` (for
    :func:`sde_diffusion.training.train.train`, which calls the network with continuous time)."""

    def __init__(self, unet, schedule):
        super().__init__()
        self.unet, self.schedule = unet, schedule

    def forward(self, x, t):
        from sde_diffusion.interop.diffusers import t_to_timestep

        return self.unet(x, t_to_timestep(self.schedule, t)).sample


class CastInputUNet(torch.nn.Module):
    """A UNet with weights in one dtype called on states of another: input cast to the weights' dtype, output cast
    back (so fp16/bf16 networks run under a float32 solver state, and the float64 reference drives the same net)."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        self.dtype = next(unet.parameters()).dtype

    def forward(self, x, timestep):
        return self.unet(x.to(self.dtype), timestep).sample.to(x.dtype)


def run_cifar_unet(device: str, size: str, out: Path, seed: int = 0, train_steps: int | None = None) -> dict:
    """The DDPM-CIFAR10-size UNet check (module docstring); returns the report written to ``cifar_unet.json``."""
    from sde_diffusion.interop.diffusers import diffusers_model, schedule_from_config, t_to_timestep

    dev = torch.device(device)
    cfg = dict(CIFAR_SIZES[size])
    if train_steps is not None:
        cfg["steps"] = train_steps
    img = cfg["unet"]["sample_size"]
    torch.manual_seed(seed)
    schedule = schedule_from_config(DDPM_SCHEDULER_CONFIG)
    unet = ddpm_cifar10_unet(**cfg["unet"]).float().to(dev)
    n_params = sum(p.numel() for p in unet.parameters())
    t0 = time.perf_counter()
    result = train(
        TimeInputUNet(unet, schedule),
        schedule,
        lambda n, g: coloured_shapes_and_digits(n, g, size=img),
        steps=cfg["steps"],
        batch_size=cfg["batch"],
        lr=2e-4,
        warmup_steps=min(200, cfg["steps"] // 10),
        ema_decay=0.999,
        progress=False,
        device=dev,
    )
    _sync(dev)
    train_s = time.perf_counter() - t0
    print(f"trained {n_params / 1e6:.1f}M-parameter UNet {cfg['steps']} steps in {train_s:.1f} s", flush=True)
    trained = result.ema_net.unet.eval()
    for p in trained.parameters():
        p.requires_grad_(False)

    def wrapped(dtype):
        return diffusers_model(CastInputUNet(_copy(trained).to(dtype)), schedule)

    g = torch.Generator().manual_seed(seed)
    shape = (cfg["n"], 3, img, img)
    x_T = sd.ForwardSDE(schedule).prior_sample(shape, g, dtype=torch.float64).to(dev)
    ts = [schedule.t_max, schedule.t_min]
    ref_model = wrapped(cfg["ref_dtype"])
    with torch.no_grad():
        ref_s, ref = _timed(
            lambda: probability_flow_reference(ref_model, x_T, ts, rtol=cfg["tol"], atol=cfg["tol"])[-1], dev, 1
        )
        ref_lo = probability_flow_reference(ref_model, x_T, ts, rtol=cfg["tol"] * 100, atol=cfg["tol"] * 100)[-1]
    ref_accuracy = float((ref - ref_lo).pow(2).mean().sqrt())

    x32 = x_T.float()
    label = t_to_timestep(schedule, torch.full((cfg["n"],), 0.5, device=dev, dtype=torch.float64)).float()
    models, bare = {}, {}
    precisions = {k: PRECISIONS[k] for k in cfg.pop("precisions")}
    for key, dtype in precisions.items():
        models[key] = wrapped(dtype)
        net = _copy(trained).to(dtype)  # the bare diffusers network, same weights and precision
        xh = x32.to(dtype)
        with torch.no_grad():
            net(xh, label)  # warm-up (cuDNN algorithm choice)
            secs, _ = _timed(lambda n=net, x=xh: [n(x, label) for _ in range(10)], dev, cfg["repeats"])
        bare[key] = secs / 10
        del net

    rows = []
    for name, opts, solver in _solver_configs():
        for nfe in cfg["nfe"]:
            row = {"solver": name, "options": opts, "nfe_budget": nfe, "stochastic": solver.stochastic}
            for key in precisions:
                steps = max(1, solver.steps_for_nfe(nfe))

                def go(s=solver, k=key, st=steps):
                    gen = torch.Generator(device=dev).manual_seed(seed + 1) if s.stochastic else None
                    return sd.sample(models[k], x32, solver=s, steps=st, generator=gen, sync_debug=dev.type == "cuda")

                try:
                    with torch.no_grad():
                        if dev.type == "cuda":
                            go()  # warm-up (allocator, cuDNN algorithm choice)
                        secs, res = _timed(go, dev, cfg["repeats"])
                    row["nfe"] = res.nfe
                    row[f"ms_per_nfe_{key}"] = 1e3 * secs / max(res.nfe, 1)
                    row[f"overhead_{key}"] = (secs / max(res.nfe, 1)) / bare[key]
                    finite = bool(torch.isfinite(res.x).all())
                    row[f"err_{key}"] = (
                        None if solver.stochastic else float((res.x.double() - ref).pow(2).mean().sqrt())
                    )
                    row[f"finite_{key}"] = finite
                    row.setdefault("sync_free", True if dev.type == "cuda" else None)
                except RuntimeError as e:  # sync_debug raises RuntimeError on a synchronising call
                    row[f"err_{key}"] = None
                    if "synchroniz" in str(e):
                        row["sync_free"] = False
                    row["error"] = str(e).splitlines()[0][:200]
            rows.append(row)
            print(
                f"  {name} {opts} nfe={row.get('nfe', nfe)}: "
                + ", ".join(
                    f"{k} err {_fmt(row.get(f'err_{k}'))} x{_fmt(row.get(f'overhead_{k}'), '.2f')}" for k in precisions
                ),
                flush=True,
            )

    worst = {k: max((r[f"overhead_{k}"] for r in rows if f"overhead_{k}" in r), default=None) for k in precisions}
    report = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "size": size,
        "parameters": n_params,
        "unet_config": {**cfg["unet"], "block_out_channels": list(cfg["unet"]["block_out_channels"])},
        "scheduler_config": DDPM_SCHEDULER_CONFIG,
        "train_steps": cfg["steps"],
        "train_seconds": train_s,
        "final_loss": float(result.losses[-1]) if result.losses else None,
        "reference": f"torchdiffeq dopri5 rtol=atol={cfg['tol']:g}, {str(cfg['ref_dtype']).removeprefix('torch.')} "
        "weights, float64 state",
        "reference_seconds": ref_s,
        "reference_rms_change_tol_x100": ref_accuracy,
        "reference_rms": float(ref.pow(2).mean().sqrt()),
        "bare_model_ms": {k: 1e3 * v for k, v in bare.items()},
        "overhead_target": 1.05,
        "max_overhead": worst,
        "sync_checked": dev.type == "cuda",
        "ode": rows,
    }
    return _write(report, out, "cifar_unet", _cifar_markdown(report))


def _cifar_markdown(r: dict) -> str:
    keys = list(r["bare_model_ms"])
    bare = ", ".join(f"{k} {v:.3f}" for k, v in r["bare_model_ms"].items())
    worst = ", ".join(f"{k} {_fmt(v, '.2f')}" for k, v in r["max_overhead"].items())
    lines = [
        f"device: {r['device']}, torch {r['torch']}, size {r['size']}; diffusers UNet2DModel "
        f"{r['parameters'] / 1e6:.1f}M parameters; training {r['train_steps']} steps in {r['train_seconds']:.1f} s "
        f"(final loss {_fmt(r['final_loss'], '.4f')}); bare network ms/call: {bare}; reference {r['reference']} "
        f"in {r['reference_seconds']:.1f} s (RMS change at 100x looser tolerance "
        f"{r['reference_rms_change_tol_x100']:.1e}, RMS of the reference {r['reference_rms']:.2e}); "
        f"worst time/NFE ÷ network: {worst} (target "
        f"{r['overhead_target']}); host syncs checked: {r['sync_checked']}",
        "",
        "| solver | options | NFE | "
        + " | ".join(f"RMS err {k}" for k in keys)
        + " | "
        + " | ".join(f"time/NFE ÷ net {k}" for k in keys)
        + " | sync-free |",
        "|---|---|---:|" + "---:|" * (2 * len(keys)) + "---|",
    ]
    for row in r["ode"]:
        errs = " | ".join(_fmt(row.get(f"err_{k}")) for k in keys)
        ratios = " | ".join(_fmt(row.get(f"overhead_{k}"), ".2f") for k in keys)
        lines.append(
            f"| {row['solver']} | {row['options'] or ''} | {row.get('nfe', row['nfe_budget'])} | {errs} | {ratios} | "
            f"{row.get('sync_free')} {row.get('error', '')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--small", action="store_true", help="tiny sizes (CPU smoke run)")
    p.add_argument("--out", type=Path, default=Path("gpu_check_out"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cifar-unet", action="store_true", help="the DDPM-CIFAR10-size diffusers UNet check instead")
    p.add_argument("--train-steps", type=int, default=None, help="override the training steps of --cifar-unet")
    a = p.parse_args(argv)
    torch.set_num_threads(1) if a.device == "cpu" else None
    size = "small" if a.small else "full"
    if a.cifar_unet:
        run_cifar_unet(a.device, size, a.out, a.seed, train_steps=a.train_steps)
    else:
        run(a.device, size, a.out, a.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
