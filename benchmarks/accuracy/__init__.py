r"""Accuracy benchmark (issues 4, 14): our deterministic solvers, and calibration, against diffusers' schedulers and
k-diffusion's samplers, on exact Gaussian mixtures and on a trained network.

Layout: ``configurations`` (ours, diffusers', k-diffusion's, the settings), ``problems`` (problems, the learned
network, references), ``runners`` (our runs, calibrated runs, precision, the units of work and the orchestration),
``diffusers_adapter`` and ``kdiffusion_adapter`` (the peers fed our problem), ``report`` (summaries, markdown).

What is measured
----------------
Problems (from :mod:`sde_diffusion.studies.problems`): ``ring`` (2-D, 8 narrow modes) and ``gmm64`` (64-D mixture of
10 diagonal Gaussians), each on two schedules, and ``ring-net`` on ``edm``: an MLP noise-prediction network trained
(float32, seeded, a few minutes on a CPU; the checkpoint goes to ``OUT/networks``) on the procedural ring data and
run in float64 -- its reference is its own dopri5 solution, its start states come from the prior:

* ``vp-discrete`` -- DDPM linear betas (1e-4 .. 0.02), 1000 steps, with ``alphas_cumprod`` accumulated in float32
  exactly as diffusers does (``torch.cumprod(1 - linspace(..., dtype=float32))``), then held in float64 by
  :class:`~sde_diffusion.schedules.VPDiscrete`. (The registry's ``vp-discrete`` recomputes the product in float64,
  which moves ``sigma`` near ``t_min`` by ~1e-5 relative; using diffusers' own table keeps that difference out of
  diffusers' error.)
* ``edm`` -- ``alpha = 1``, ``sigma = t`` from 80 down to 0.002.

The network is the exact noise (or data) prediction of the mixture. Every run starts from the exact marginal at
``t_max`` (the same batch ``x_T`` for every run) or -- for a diffusers configuration whose first timestep is below
``t_max`` (``"leading"`` spacing) -- from the exact probability-flow state at that time on the *same* trajectory,
so that every run aims at the same end point. The reference is
:func:`~sde_diffusion.reference.probability_flow_reference` (torchdiffeq dopri5, float64, ``rtol = atol = 1e-10``,
every needed time stepped onto exactly); its error is estimated by a second solve at ``1e-8``.

Two outputs, both at the common end time ``t_min`` (``t = 1/N``, i.e. ``alphas_cumprod[0]``, or ``sigma = 0.002``):

* ``state`` -- the state at ``t_min`` against the reference state there (ours: integrate ``t_max -> t_min``;
  diffusers: ``final_sigmas_type="sigma_min"``, DDIM/PNDM with ``set_alpha_to_one=False``, DEIS);
* ``x0`` -- the data prediction at the last evaluation time, against the exact data prediction ``D(x_ref(t_last))``
  at the exact state (ours: ``denoise_to_zero=True``, i.e. ``NFE - 1`` evaluations to ``t_min`` and one
  denoising evaluation; diffusers: ``final_sigmas_type="zero"``, DDIM ``set_alpha_to_one=True``, Euler/Heun,
  whose final update to ``sigma = 0`` is exactly that data prediction). diffusers runs whose last evaluation is not
  at ``t_min`` (``"trailing"``/``"leading"`` spacing to zero) are measured against their own exact target but are
  not eligible as "best": they solve a shorter problem and return a blurred posterior mean.

Error: RMS over the batch and the coordinates (:func:`~sde_diffusion.studies.metrics.rms_error`), and the median
over the batch of the per-sample RMS (insensitive to the few samples that a solver sends to another mode).

Feeding diffusers the same problem: its model input at (integer) timestep ``k`` is our continuous time
``t = (k + 1)/N`` (``alphas_cumprod[k]``); the exact network is evaluated there (for fractional timesteps, e.g.
``EulerDiscreteScheduler`` with Karras sigmas, on our continuous interpolation). When diffusers pairs a Karras /
exponential noise level with a *rounded* timestep, the network sees the rounded one -- as a real network would. EDM
schedulers get the output that their own ``precondition_outputs`` maps to the exact data prediction at the sigma of
the current step. Budgets: the largest ``num_inference_steps`` whose number of model calls (``len(timesteps)``) fits.

k-diffusion (``pip install --no-deps k-diffusion``; never a core dependency): its deterministic samplers (Euler,
Heun, DPM-2, LMS-2/3/4, DPM-Solver++(2M), and the SDE samplers at ``eta = 0``) on its Karras and exponential
sigma schedules, in VE variables, with the same start states and references.

Calibrated (``grid = "calibrated"``): :func:`sde_diffusion.calibrate` per problem and budget, on start states of
another seed (``cal_seed``: half pilot, half its own held-out check) -- the evaluation batch ``x_T`` (``seed``) is
never seen -- then run on ``x_T`` exactly like the named grids (the ``x0`` output at NFE ``n`` uses the calibration
for ``n - 1``). The summary compares it, and ``sample()``'s proposed default (the registry name that ranks best on
``logsnr`` at NFE 10-20), with the best peer configuration (diffusers or k-diffusion) per cell.

Precision: for a few of our solvers, the network output cast to float16 / bfloat16 / float32 and back (float32
state) against the float64 run of the same configuration, at NFE 10.

Usage::

    python -m benchmarks.accuracy --out benchmarks/results            # full (see docs/benchmarks/accuracy.md)
    python -m benchmarks.accuracy --out /tmp/acc --quick              # smoke run (what the test runs)

Writes ``accuracy.json`` (schema ``SCHEMA_VERSION``, every run) and ``accuracy.md`` (summary tables).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from .configurations import KIND, SCHEMA_VERSION, Settings, our_configs, quick_settings
from .report import to_markdown
from .runners import run_benchmark

__all__ = ["main", "dumps", "run_benchmark", "Settings", "quick_settings", "to_markdown", "KIND", "SCHEMA_VERSION"]

ROOT = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------------------------------


def json_safe(o, digits: int = 7):
    """Non-finite floats to ``None``, floats to ``digits`` significant digits (the file holds ~10^4 runs)."""
    if isinstance(o, float):
        return float(f"{o:.{digits}g}") if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): json_safe(v, digits) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v, digits) for v in o]
    return o


def dumps(result: dict) -> str:
    """The result as JSON: everything indented, except one line per run."""
    safe = json_safe(result)
    head = json.dumps({k: v for k, v in safe.items() if k != "runs"}, indent=1)
    runs = ",\n".join("  " + json.dumps(r, separators=(",", ":")) for r in safe["runs"])
    return head[:-2] + ',\n "runs": [\n' + runs + "\n ]\n}\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--quick", action="store_true", help="seconds-long smoke run (ring only, NFE 10, a few configs)")
    ap.add_argument("--jobs", type=int, default=None, help="worker processes (default 2; 1 with --quick)")
    ap.add_argument("--no-diffusers", action="store_true", help="skip diffusers")
    ap.add_argument("--no-kdiffusion", action="store_true", help="skip k-diffusion")
    ap.add_argument("--no-calibration", action="store_true", help="skip the calibrated runs")
    ap.add_argument("--sweep", action="store_true", help="every configuration of ours (our_configs), not the core ones")
    ap.add_argument("--networks", type=Path, help="where the learned problems' checkpoints go (default OUT/networks)")
    args = ap.parse_args(argv)
    settings = quick_settings() if args.quick else Settings()
    net_dir = args.networks or args.out / "networks"
    settings = Settings(
        **{
            **settings.__dict__,
            "diffusers": settings.diffusers and not args.no_diffusers,
            "kdiffusion": settings.kdiffusion and not args.no_kdiffusion,
            "cal_nfe": () if args.no_calibration else settings.cal_nfe,
            "net_dir": str(net_dir),
            "ours": tuple(dict.fromkeys([*our_configs(), *settings.ours])) if args.sweep else settings.ours,
        }
    )
    jobs = args.jobs or (1 if args.quick else 2)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    result = run_benchmark(settings, jobs=jobs, log=lambda m: print(m, file=sys.stderr))
    result["command"] = "python -m benchmarks.accuracy " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "accuracy.json").write_text(dumps(result))
    md = to_markdown(result)
    (args.out / "accuracy.md").write_text(md)
    print(md)
    return result
