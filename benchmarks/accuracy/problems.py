"""Problems of the accuracy benchmark and their torchdiffeq references."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from sde_diffusion.models import Model
from sde_diffusion.reference import probability_flow_reference
from sde_diffusion.schedules import VPDiscrete
from sde_diffusion.studies.metrics import median_error, rms_error
from sde_diffusion.studies.problems import PROBLEMS, Problem, get_schedule
from sde_diffusion.training.nets import MLPScoreNet
from sde_diffusion.training.train import load_checkpoint, load_model, time_input_map, train

from .configurations import N_TRAIN, VP_CONFIG

# ---------------------------------------------------------------------------------------------------------------------
# problems and references
# ---------------------------------------------------------------------------------------------------------------------


def vp_discrete_schedule() -> VPDiscrete:
    """DDPM linear betas, 1000 steps, ``alphas_cumprod`` accumulated in float32 as diffusers does."""
    betas = torch.linspace(VP_CONFIG["beta_start"], VP_CONFIG["beta_end"], N_TRAIN, dtype=torch.float32)
    return VPDiscrete(alphas_cumprod=torch.cumprod(1.0 - betas, dim=0).double())


def make_problem(name: str, schedule: str, net_dir: str = "") -> Problem:
    """A registry problem (``vp-discrete`` with diffusers' float32-accumulated table, module docstring), or a
    learned problem (``"ring-net"``: the network trained by :func:`train_network`, checkpoint in ``net_dir``)."""
    if name in LEARNED:
        return LearnedProblem(name, schedule, net_checkpoint(net_dir, name, schedule))
    entry = PROBLEMS[name]
    sch = vp_discrete_schedule() if schedule == "vp-discrete" else schedule
    p = Problem(name, entry.make(), sch, description=entry.description)
    p.schedule_name = schedule
    return p


#: learned problems: name -> (the procedural training data set, the analytic problem whose event shape it shares)
LEARNED = {"ring-net": ("ring", "ring")}


def net_checkpoint(net_dir: str, name: str, schedule: str) -> Path:
    return Path(net_dir) / f"{name}-{schedule}" / "ckpt.pt"


def train_network(name: str, schedule: str, net_dir: str, steps: int) -> Path:
    """Train (or resume; a finished run is reused) the learned problem's network: an MLP eps-predictor on the
    procedural data set, logSNR time input, seed 0 -- deterministic on the CPU."""
    path = net_checkpoint(net_dir, name, schedule)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():  # the initial weights too: seed 0, whatever the caller's global RNG state
        torch.manual_seed(0)
        net = MLPScoreNet(dim=2).to(torch.float32)  # trained in float32 (speed), evaluated in float64
    sch = vp_discrete_schedule() if schedule == "vp-discrete" else get_schedule(schedule)
    train(
        net,
        sch,
        LEARNED[name][0],
        prediction="eps",
        steps=steps,
        batch_size=256,
        time_input="logsnr",
        checkpoint=path,
        progress=False,
    )
    return path


class LearnedProblem(Problem):
    """A trained network as a benchmark problem: start states from the prior ``N(0, sigma(t_max)^2 I)``, the
    reference its own dopri5 solution (no closed form). The network is loaded once per process; every
    :meth:`model` call returns a fresh wrapper (own NFE counter) around it, in float64."""

    def __init__(self, name: str, schedule: str, checkpoint: Path):
        entry = PROBLEMS[LEARNED[name][1]]
        self.checkpoint = checkpoint
        self._net = load_model(checkpoint, dtype=torch.float64)
        super().__init__(
            name,
            entry.make(),
            self._net.schedule,
            start="prior",
            description=f"MLP eps-network trained (float32) on the procedural '{LEARNED[name][0]}' data; float64 runs",
        )
        self.schedule_name = schedule

    def model(self, prediction: str = "eps", **kwargs) -> Model:
        if prediction != "eps" or kwargs:
            raise ValueError("a learned problem's model is the trained eps-network")
        state = load_checkpoint(self.checkpoint)
        return Model(
            self._net.fn, self.schedule, "eps", time_input=time_input_map(self.schedule, state.get("time_input", "t"))
        )


def start_states(problem: Problem, n: int, seed: int) -> torch.Tensor:
    return problem.start(n, torch.Generator().manual_seed(seed))


def time_key(t: float) -> float:
    return round(float(t), 12)


def tvec(t: float, n: int) -> torch.Tensor:
    return torch.full((n,), float(t), dtype=torch.float64)


def denoise(problem: Problem, x: torch.Tensor, t: float) -> torch.Tensor:
    """The exact data prediction ``D(x, t)`` (float64)."""
    x = x.to(torch.float64)
    return problem.model().predict(x, tvec(t, x.shape[0]), "x0")


def reference(problem: Problem, x_T: torch.Tensor, times, rtol: float) -> tuple[dict, dict]:
    """The PF-ODE states at every time in ``times`` (and ``t_max``, ``t_min``) from ``x_T`` at ``t_max``, keyed by
    :func:`time_key`, and a dict describing the reference (its error estimated by a solve at ``100 rtol``)."""
    ts = sorted({time_key(t) for t in times} | {time_key(problem.t_start), time_key(problem.t_end)}, reverse=True)
    ts[0], ts[-1] = problem.t_start, problem.t_end
    grid = torch.tensor(ts, dtype=torch.float64)
    t0 = time.perf_counter()
    model = problem.model()
    tight = probability_flow_reference(model, x_T, grid, rtol=rtol, atol=rtol)
    loose = probability_flow_reference(problem.model(), x_T, grid, rtol=100 * rtol, atol=100 * rtol)
    est = max(rms_error(a, b) for a, b in zip(tight[1:], loose[1:]))
    info = {
        "method": "dopri5",
        "rtol": rtol,
        "atol": rtol,
        "times": len(ts),
        "nfe": model.nfe,
        "error_estimate": est,
        "seconds": time.perf_counter() - t0,
    }
    return {time_key(t): tight[i] for i, t in enumerate(ts)}, info


def run_header(
    problem: Problem,
    library: str,
    config: str,
    family: str,
    grid: str,
    *,
    t_start: float | None = None,
    t_end: float | None = None,
    eligible: bool = True,
) -> dict:
    """The columns every run record of every library starts with: the library, the problem and its schedule, the
    configuration (label and family), the grid, the time span integrated (the problem's own unless given) and whether
    the run is eligible for the comparison at ``t_min``."""
    return dict(
        library=library,
        problem=problem.name,
        schedule=problem.schedule_name,
        config=config,
        family=family,
        grid=grid,
        t_start=problem.t_start if t_start is None else t_start,
        t_end=problem.t_end if t_end is None else t_end,
        eligible=eligible,
    )


def error_record(x: torch.Tensor, target: torch.Tensor) -> dict:
    if not bool(torch.isfinite(x).all()):
        return {"error": None, "error_median": None, "failed": "non-finite output"}
    return {"error": rms_error(x, target), "error_median": median_error(x, target)}
