"""Configurations of the accuracy benchmark: ours, diffusers' and k-diffusion's, and the run settings."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from sde_diffusion.calibration import AUTO_SOLVERS, SCREEN_GRIDS
from sde_diffusion.sample import sample

SCHEMA_VERSION = 1
KIND = "sde_diffusion.accuracy_benchmark"
N_TRAIN = 1000
VP_CONFIG = dict(num_train_timesteps=N_TRAIN, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
GRIDS = ("logsnr", "time_uniform", "time_quadratic", "karras", "vp_quadratic")
MODEL_DTYPES = ("float32", "float16", "bfloat16")
#: diffusers classes whose ``step`` rounds the state to float32 (``sample.to(torch.float32)``) whatever its dtype
ROUNDS_STATE = ("DPMSolverMultistepScheduler", "EulerDiscreteScheduler", "EDMEulerScheduler")


# ---------------------------------------------------------------------------------------------------------------------
# configurations
# ---------------------------------------------------------------------------------------------------------------------


def our_configs() -> list[str]:
    """Every deterministic fixed-budget configuration of ours (run on each grid of :data:`GRIDS`)."""
    c = ["ddim", "euler", "heun", "heun:variable=sigma"]
    for lof in ("true", "false"):
        c += [f"dpm_solver++:order=2,multistep=true,update={v},lower_order_final={lof}" for v in ("paper", "exact")]
        c += [
            f"dpm_solver++:order=3,multistep=true,update={v},lower_order_final={lof}"
            for v in ("paper", "heun", "exact")
        ]
    c += [
        "dpm_solver++:order=2,multistep=false,update=paper",
        "dpm_solver++:order=2,multistep=false,update=heun",
        "dpm_solver++:order=3,multistep=false,update=paper",
        "dpm_solver++:order=3,multistep=false,update=exact",
        "dpm_solver++:order=2,multistep=false,stages=grid",
        "dpm_solver++:order=3,multistep=false,stages=grid",
    ]
    c += [f"dpm_solver:order={o},multistep=true,update={v}" for o in (2, 3) for v in ("paper", "exact")]
    c += ["dpm_solver:order=2", "dpm_solver:order=3", "dpm_solver:order=3,update=exact"]
    c += ["dpm_solver_fast:order=2", "dpm_solver_fast:order=3"]
    c += [f"deis:method={v},order={o}" for v in ("tab", "rhoab", "logrho") for o in (2, 3)]
    c += [f"deis:method=rhork,tableau={t}" for t in ("heun", "kutta3", "rk4")]
    c += [
        f"unipc:predictor_order={o},b_h={v},lower_order_final={lof}"
        for o in (2, 3)
        for v in ("bh1", "bh2")
        for lof in ("false", "true")
    ]
    c += [f"unipc:predictor_order={o},b_h={v},prediction=eps" for o in (2, 3) for v in ("bh1", "bh2")]
    c += [
        "unipc:predictor_order=1,b_h=bh1",
        "unipc:predictor_order=1,b_h=bh2",
        "unipc:predictor_order=2,disable_corrector=true",
        "unipc:predictor_order=3,disable_corrector=true",
    ]
    c += ["pndm:warmup=heun", "pndm:warmup=rk4", "plms", "ipndm:ab_order=2", "ipndm:ab_order=3", "ipndm:ab_order=4"]
    c += [name for name in DEFAULT_CANDIDATES if name not in c]
    return c


#: configurations compared in the "Recommended defaults" table (those present in a run are reported)
CANDIDATES = (
    "deis:method=logrho,order=3",
    "dpm_solver:order=3,multistep=true,update=exact",
    "ipndm:ab_order=3",
    "ipndm:ab_order=4",
    "unipc:predictor_order=2,b_h=bh1,prediction=eps",
    "unipc:predictor_order=3,b_h=bh2,prediction=eps",
    "unipc:predictor_order=2,b_h=bh2,lower_order_final=true",
    "unipc:predictor_order=3,b_h=bh2,lower_order_final=true",
    "dpm_solver++:order=2,multistep=true,update=paper,lower_order_final=true",
    "dpm_solver++:order=3,multistep=true,update=paper,lower_order_final=true",
    "heun:variable=sigma",
    "ddim",
)


def core_configs() -> list[str]:
    """The configurations of the default run: the candidate defaults, the registry names with their default options
    and what calibration searches (the full sweep, ``our_configs``, is ``--sweep``)."""
    return list(dict.fromkeys([*CANDIDATES, *DEFAULT_CANDIDATES, *AUTO_SOLVERS, default_config()[0]]))


#: registry names with their default options: what ``sample()``'s default ``solver=`` can name
DEFAULT_CANDIDATES = ("ddim", "dpm_solver++", "dpm_solver", "unipc", "deis", "ipndm", "heun", "plms")


PRECISION_CONFIGS = (
    "ddim",
    "heun:variable=sigma",
    "dpm_solver++:order=2,multistep=true",
    "dpm_solver++:order=3,multistep=true",
    "unipc:predictor_order=3,b_h=bh2",
    "deis:order=3",
    "ipndm:ab_order=4",
)


@dataclass(frozen=True)
class DiffusersConfig:
    """One diffusers scheduler configuration: class, options, the grid label, what it returns and in which space
    its state lives (``vp``: ``x_t``; ``ve``: ``x_t/alpha``; ``edm``: EDM's ``x``)."""

    cls: str
    kwargs: tuple
    grid: str
    output: str
    space: str = "vp"

    @property
    def label(self) -> str:
        short = self.cls.replace("Scheduler", "")
        return f"{short}({', '.join(f'{k}={v}' for k, v in self.kwargs)})"


def diffusers_config(cls: str, grid: str, output: str, space: str = "vp", **kw) -> DiffusersConfig:
    return DiffusersConfig(cls, tuple(kw.items()), grid, output, space)


#: diffusers grid options: label -> scheduler keywords
_VP_SPACINGS = {
    "linspace": dict(timestep_spacing="linspace"),
    "leading": dict(timestep_spacing="leading"),
    "leading+1": dict(timestep_spacing="leading", steps_offset=1),
    "trailing": dict(timestep_spacing="trailing"),
}
_SIGMAS = {"karras": dict(use_karras_sigmas=True), "exponential": dict(use_exponential_sigmas=True)}
#: (final_sigmas_type, lower_order_final) pairs; "zero" with lower_order_final=False is rewritten by diffusers itself
_FINALS = (("zero", True), ("sigma_min", True), ("sigma_min", False))


def _vp_grids(*names):
    table = {**_VP_SPACINGS, **_SIGMAS, "lu": dict(use_lu_lambdas=True)}
    return [(n, table[n]) for n in names]


def _dpm_solver_configs(cls: str, grid: str, kw: dict) -> list[DiffusersConfig]:
    """A DPM-Solver scheduler of diffusers (multistep or singlestep) on ``grid``: both algorithm types, orders 2 and 3,
    both second-order update rules and every final step of :data:`_FINALS` (except ``dpmsolver`` with a final step to
    zero, which diffusers refuses)."""
    return [
        diffusers_config(
            cls,
            grid,
            "x0" if f == "zero" else "state",
            algorithm_type=a,
            solver_order=o,
            solver_type=st,
            final_sigmas_type=f,
            lower_order_final=lof,
            **kw,
        )
        for a in ("dpmsolver++", "dpmsolver")
        for o in (2, 3)
        for st in ("midpoint", "heun")
        for f, lof in _FINALS
        if not (a == "dpmsolver" and f == "zero")
    ]


def diffusers_configs(schedule: str, quick: bool = False) -> list[DiffusersConfig]:
    """The diffusers sweep for a schedule (``quick``: a handful)."""
    if schedule == "edm":
        if quick:
            return [
                diffusers_config(
                    "EDMDPMSolverMultistepScheduler",
                    "karras",
                    "state",
                    "edm",
                    solver_order=2,
                    final_sigmas_type="sigma_min",
                ),
                diffusers_config("EDMEulerScheduler", "karras", "x0", "edm", final_sigmas_type="zero"),
            ]
        out = [
            diffusers_config(
                "EDMEulerScheduler", s, "x0" if f == "zero" else "state", "edm", sigma_schedule=s, final_sigmas_type=f
            )
            for s in ("karras", "exponential")
            for f in ("zero", "sigma_min")
        ]
        out += [
            diffusers_config(
                "EDMDPMSolverMultistepScheduler",
                s,
                "x0" if f == "zero" else "state",
                "edm",
                solver_order=o,
                solver_type=st,
                sigma_schedule=s,
                final_sigmas_type=f,
                lower_order_final=lof,
            )
            for o in (2, 3)
            for st in ("midpoint", "heun")
            for s in ("karras", "exponential")
            for f, lof in _FINALS
        ]
        return out
    if quick:
        return [
            diffusers_config("DDIMScheduler", "trailing", "state", timestep_spacing="trailing", set_alpha_to_one=False),
            diffusers_config(
                "DPMSolverMultistepScheduler",
                "karras",
                "state",
                solver_order=2,
                use_karras_sigmas=True,
                final_sigmas_type="sigma_min",
            ),
            diffusers_config(
                "UniPCMultistepScheduler",
                "karras",
                "x0",
                solver_order=3,
                use_karras_sigmas=True,
                final_sigmas_type="zero",
            ),
        ]
    out = []
    for g, kw in _vp_grids("linspace", "leading", "leading+1", "trailing"):
        out += [
            diffusers_config("DDIMScheduler", g, "x0" if one else "state", set_alpha_to_one=one, **kw)
            for one in (False, True)
        ]
        out += [
            diffusers_config("PNDMScheduler", g, "state", skip_prk_steps=skip, set_alpha_to_one=False, **kw)
            for skip in (True, False)
        ]
    for g, kw in _vp_grids("linspace", "leading", "trailing", "karras", "exponential", "lu"):
        out += _dpm_solver_configs("DPMSolverMultistepScheduler", g, kw)
    for g, kw in [("linspace", {})] + _vp_grids("karras", "exponential"):
        out += _dpm_solver_configs("DPMSolverSinglestepScheduler", g, kw)
    grids = _vp_grids("linspace", "leading", "trailing", "karras", "exponential")
    for g, kw in grids:
        out += [
            diffusers_config(
                "UniPCMultistepScheduler",
                g,
                "x0" if f == "zero" else "state",
                solver_type=st,
                solver_order=o,
                final_sigmas_type=f,
                lower_order_final=lof,
                **({} if x0 else {"predict_x0": False}),
                **kw,
            )
            for st in ("bh1", "bh2")
            for o in (2, 3)
            for f, lof in _FINALS
            for x0 in (True, False)
        ]
        out += [
            diffusers_config("DEISMultistepScheduler", g, "state", solver_order=o, lower_order_final=lof, **kw)
            for o in (2, 3)
            for lof in (True, False)
        ]
        out += [
            diffusers_config(
                "EulerDiscreteScheduler", g, "x0" if f == "zero" else "state", "ve", final_sigmas_type=f, **kw
            )
            for f in ("zero", "sigma_min")
        ]
        out.append(diffusers_config("HeunDiscreteScheduler", g, "x0", "ve", **kw))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------------------------------------------------


def default_config() -> tuple[str, str]:
    """``sample()``'s default solver and grid (read from its signature, so the report follows the library)."""
    params = inspect.signature(sample).parameters
    solver, grid = params["solver"].default, params["grid"].default
    return (solver if isinstance(solver, str) else solver.name), grid or "logsnr"  # (None: the loop's logsnr)


@dataclass(frozen=True)
class KDiffusionConfig:
    """One k-diffusion sampler (deterministic: no churn, ``eta = 0``) with its options, on a sigma schedule."""

    sampler: str
    kwargs: tuple
    grid: str

    @property
    def label(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.kwargs)
        return f"{self.sampler}({opts})" if opts else self.sampler


#: k-diffusion's deterministic samplers (``eta = 0`` turns the SDE samplers into their ODE counterparts)
KDIFFUSION_SAMPLERS = (
    ("sample_euler", ()),
    ("sample_heun", ()),
    ("sample_dpm_2", ()),
    ("sample_lms", (("order", 2),)),
    ("sample_lms", (("order", 3),)),
    ("sample_lms", (("order", 4),)),
    ("sample_dpmpp_2m", ()),
    ("sample_dpmpp_2m_sde", (("eta", 0.0), ("solver_type", "heun"))),
    ("sample_dpmpp_3m_sde", (("eta", 0.0),)),
)
#: k-diffusion's sigma schedules (``exponential`` is uniform in lambda)
KDIFFUSION_GRIDS = ("karras", "exponential")


def kdiffusion_configs(quick: bool = False) -> list[KDiffusionConfig]:
    samplers = KDIFFUSION_SAMPLERS[-3:-1] if quick else KDIFFUSION_SAMPLERS
    return [KDiffusionConfig(s, kw, g) for s, kw in samplers for g in KDIFFUSION_GRIDS]


@dataclass(frozen=True)
class Settings:
    problems: tuple = ("ring", "gmm64")
    schedules: tuple = ("vp-discrete", "edm")
    #: learned problems ``(name, schedule)``: a network trained on the procedural data (its reference: its own
    #: dopri5 solution)
    learned: tuple = (("ring-net", "edm"),)
    nfe: tuple = (5, 10, 20)
    target_nfe: tuple = (5, 10, 20)
    grids: tuple = GRIDS
    batch: tuple = (("ring", 256), ("gmm64", 64), ("ring-net", 128))
    rtol: float = 1e-10
    seed: int = 0
    ours: tuple = field(default_factory=lambda: tuple(core_configs()))
    precision_configs: tuple = PRECISION_CONFIGS
    precision_nfe: tuple = (10,)
    precision_grid: str = "logsnr"
    quick: bool = False
    diffusers: bool = True
    kdiffusion: bool = True
    #: the learned network: training steps and where its checkpoint goes (set by ``main``)
    net_steps: int = 1500
    net_dir: str = ""
    #: ``sample()``'s default ``(solver, grid)``
    default: tuple = field(default_factory=default_config)
    #: calibration (:func:`sde_diffusion.calibrate`) at every ``cal_nfe`` (``state``) and ``cal_nfe - 1`` (``x0``):
    #: ``cal_batch`` start states from ``cal_seed`` (never the evaluation seed; half pilot, half held out)
    cal_nfe: tuple = (5, 10, 20)
    cal_solvers: tuple = AUTO_SOLVERS
    cal_grids: tuple = SCREEN_GRIDS
    cal_seed: int = 1000
    cal_batch: int = 192
    cal_refine: int = 2
    cal_budget_s: float = 50.0
    cal_rtol: float = 1e-9

    def __post_init__(self):
        if self.seed == self.cal_seed:
            raise ValueError("the calibration seed must differ from the evaluation seed")

    def n(self, problem: str) -> int:
        return dict(self.batch)[problem]

    def units(self) -> list[tuple[str, str]]:
        """Every ``(problem, schedule)``: the analytic problems on each schedule, then the learned ones."""
        return [(p, s) for p in self.problems for s in self.schedules] + list(self.learned)

    def cal_budgets(self) -> list[int]:
        """Budgets that get calibrated: every ``cal_nfe`` (``state``) and ``cal_nfe - 1`` (``x0``)."""
        return sorted({b for n in self.cal_nfe for b in (n, n - 1) if b >= 1})

    def budgets(self) -> list[int]:
        """Our budgets: every NFE, and NFE - 1 (the ``x0`` output spends one evaluation on the denoising)."""
        return sorted({b for n in self.nfe for b in (n, n - 1) if b >= 1})


def quick_settings() -> Settings:
    return Settings(
        problems=("ring",),
        learned=(("ring-net", "edm"),),
        nfe=(10,),
        target_nfe=(10,),
        grids=("logsnr", "karras"),
        batch=(("ring", 64), ("ring-net", 16)),
        ours=("ddim", "dpm_solver++:order=2,multistep=true", "unipc:predictor_order=3"),
        precision_configs=("ddim",),
        precision_nfe=(10,),
        quick=True,
        net_steps=50,
        cal_nfe=(10,),
        cal_solvers=("ddim", "dpm_solver++:order=2,multistep=true"),
        cal_batch=32,
        cal_grids=("logsnr", "karras", "vp_quadratic"),
        cal_refine=0,
        cal_budget_s=20.0,
        cal_rtol=1e-7,
    )


#: diffusers' out-of-the-box choice: ``DPMSolverMultistepScheduler()`` (DPM-Solver++(2M), midpoint, "linspace",
#: ``final_sigmas_type="zero"``, ``lower_order_final=True``)
DIFFUSERS_DEFAULT = diffusers_config(
    "DPMSolverMultistepScheduler",
    "linspace",
    "x0",
    algorithm_type="dpmsolver++",
    solver_order=2,
    solver_type="midpoint",
    final_sigmas_type="zero",
    lower_order_final=True,
    timestep_spacing="linspace",
)
