r"""diffusers interop: schedules from scheduler configs, networks as a [`Model`][sde_diffusion.models.Model], and a
diffusers scheduler that runs our solvers inside an existing pipeline.

**Time and timestep labels.** A diffusers scheduler config describes ``N = num_train_timesteps`` betas;
[`VPDiscrete`][sde_diffusion.schedules.VPDiscrete] puts the cumulative product ``alphas_cumprod[n]`` at the continuous
time ``t_n = (n + 1) / N`` (exactly) and interpolates ``log alpha`` linearly in between. A diffusers network takes the
integer index ``n`` as its ``timestep``; the continuous-time map used here is therefore

``label(t) = N t - 1``  (so ``label(t_n) = n``; ``t = (label + 1) / N``),

which is an integer on the training grid and a fractional label between grid points (the sinusoidal timestep
embedding of diffusers' UNets is defined for every real label). For ``N = 1000`` it equals the DPM-Solver convention
``1000 (t - 1/N)`` of ``Model(time_input="label")``.

**Prediction types.** diffusers' ``prediction_type`` maps to ours: ``epsilon -> eps``, ``sample -> x0``,
``v_prediction -> v`` ([`PREDICTION_TYPES`][sde_diffusion.interop.diffusers.PREDICTION_TYPES]).

**The scheduler.** [`SDEScheduler`][sde_diffusion.interop.diffusers.SDEScheduler] is a diffusers ``SchedulerMixin``:
``pipe.scheduler = SDEScheduler.from_config(pipe.scheduler.config, solver="unipc", predictor_order=3)`` and the
pipeline's own ``__call__`` runs our solver. See its docstring (and ``docs/interop/diffusers.md``) for what is
supported.

This module imports diffusers; ``import sde_diffusion`` does not.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

import torch

try:
    import diffusers
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput
    from diffusers.utils.torch_utils import randn_tensor
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("sde_diffusion.interop.diffusers needs diffusers: pip install 'sde-diffusion[diffusers]'") from e

from diffusers.utils import logging

from ..models import DynamicThresholding, Model
from ..sample import Sampler
from ..schedules import VPDiscrete
from ..solvers import get_solver
from ..solvers.base import NoiseSource

__all__ = [
    "PREDICTION_TYPES",
    "prediction_from_config",
    "schedule_from_config",
    "t_to_timestep",
    "timestep_to_t",
    "diffusers_model",
    "SDEScheduler",
    "fixed_grid_solvers",
]

logger = logging.get_logger(__name__)

#: diffusers ``prediction_type`` -> our parametrisation name
PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}


def prediction_from_config(config: Mapping[str, Any]) -> str:
    """Our parametrisation (``eps``, ``x0``, ``v``) for a config's ``prediction_type`` (default ``epsilon``)."""
    kind = config.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {sorted(PREDICTION_TYPES)}, got {kind!r}")
    return PREDICTION_TYPES[kind]


def schedule_from_config(config: Mapping[str, Any]) -> VPDiscrete:
    """The [`VPDiscrete`][sde_diffusion.schedules.VPDiscrete] schedule of a diffusers scheduler config (see
    [`betas_from_config`][sde_diffusion.schedules.betas_from_config] for the keys read)."""
    return VPDiscrete.from_config(config)


def t_to_timestep(schedule: VPDiscrete, t):
    """The network's timestep label of continuous time ``t``: ``N t - 1`` (``N = schedule.num_steps``)."""
    return t * schedule.num_steps - 1.0


def timestep_to_t(schedule: VPDiscrete, timestep):
    """Inverse of [`t_to_timestep`][sde_diffusion.interop.diffusers.t_to_timestep]: ``(timestep + 1) / N``."""
    return (timestep + 1.0) / schedule.num_steps


def _batched(cond: torch.Tensor | None, batch: int, name: str) -> torch.Tensor | None:
    if cond is None:
        return None
    if cond.shape[0] == batch:
        return cond
    if cond.shape[0] == 1:
        return cond.expand(batch, *cond.shape[1:])
    raise ValueError(f"{name} has batch {cond.shape[0]}; the state has batch {batch} (give 1 or {batch})")


def _mean_part(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A network with a learned variance returns ``2C`` channels: the first ``C`` are the mean prediction."""
    if out.ndim == x.ndim and out.shape[1] == 2 * x.shape[1]:
        return out[:, : x.shape[1]]
    return out


def diffusers_model(
    net: torch.nn.Module,
    config: Mapping[str, Any] | VPDiscrete,
    *,
    prediction: str | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
    class_labels: torch.Tensor | None = None,
    guidance_scale: float | None = None,
    uncond_encoder_hidden_states: torch.Tensor | None = None,
    uncond_class_labels: torch.Tensor | None = None,
    thresholding: DynamicThresholding | None = None,
    **net_kwargs: Any,
) -> Model:
    r"""A [`Model`][sde_diffusion.models.Model] from a diffusers network (``UNet2DModel``, ``UNet2DConditionModel``,
    or anything called as ``net(x, timestep, **kwargs)`` returning an object with ``.sample`` or a tensor).

    Args:
        net: the network.
        config: the pipeline's scheduler config (``pipe.scheduler.config``: betas and ``prediction_type``), or a
            [`VPDiscrete`][sde_diffusion.schedules.VPDiscrete] schedule (then ``prediction`` defaults to ``eps``).
        prediction: override the parametrisation (``eps``, ``x0``, ``v``).
        encoder_hidden_states: text conditioning of a ``UNet2DConditionModel`` (batch 1 or the sampling batch).
        class_labels: class conditioning (batch 1 or the sampling batch).
        guidance_scale: classifier-free guidance ``out = u + s (c - u)`` in the network's own parametrisation
            (Ho & Salimans, arXiv:2207.12598), evaluated in **one batched call** on ``[x, x]`` with the unconditional
            inputs first; needs ``uncond_encoder_hidden_states`` and/or ``uncond_class_labels``. One guided
            evaluation counts as one NFE.
        thresholding: optional [`DynamicThresholding`][sde_diffusion.models.DynamicThresholding].
        net_kwargs: passed to every call (e.g. ``added_cond_kwargs``, ``cross_attention_kwargs``).

    The network sees the timestep label ``N t - 1`` (module docstring) in the state's dtype; a learned-variance
    output (``2C`` channels) contributes its first ``C`` channels.
    """
    if isinstance(config, VPDiscrete):
        schedule, pred = config, prediction or "eps"
    else:
        schedule, pred = schedule_from_config(config), prediction or prediction_from_config(config)
    guided = guidance_scale is not None
    if guided and uncond_encoder_hidden_states is None and uncond_class_labels is None:
        raise ValueError("guidance_scale needs uncond_encoder_hidden_states and/or uncond_class_labels")
    n = schedule.num_steps

    def call(x, label, ehs, labels):
        kwargs = dict(net_kwargs)
        if ehs is not None:
            kwargs["encoder_hidden_states"] = ehs
        if labels is not None:
            kwargs["class_labels"] = labels
        out = net(x, label, **kwargs)
        out = out.sample if hasattr(out, "sample") else (out[0] if isinstance(out, tuple) else out)
        return _mean_part(out, x)

    def fn(x, t):
        wide = torch.float32 if t.device.type == "mps" else torch.float64  # (label of a float32 t, rounded once)
        # labels stay at least float32 (diffusers' timestep embedding runs in float32; a half label near 999 would
        # be off by up to 0.25)
        label = (t.to(wide) * n - 1.0).to(torch.promote_types(t.dtype, torch.float32))
        b = x.shape[0]
        ehs = _batched(encoder_hidden_states, b, "encoder_hidden_states")
        labels = _batched(class_labels, b, "class_labels")
        if not guided:
            return call(x, label, ehs, labels)
        u_ehs = _batched(uncond_encoder_hidden_states, b, "uncond_encoder_hidden_states")
        u_labels = _batched(uncond_class_labels, b, "uncond_class_labels")
        both_ehs = None if ehs is None else torch.cat([ehs if u_ehs is None else u_ehs, ehs])
        both_labels = None if labels is None else torch.cat([labels if u_labels is None else u_labels, labels])
        out = call(torch.cat([x, x]), torch.cat([label, label]), both_ehs, both_labels)
        u, c = out.chunk(2)
        return u + guidance_scale * (c - u)

    return Model(fn, schedule, pred, thresholding=thresholding)


# ---------------------------------------------------------------------------------------------------------------------
# the scheduler
# ---------------------------------------------------------------------------------------------------------------------


class _NeedEvaluation(Exception):
    """Raised by the replay model when a step asks for an output the pipeline has not supplied yet."""

    def __init__(self, x: torch.Tensor):
        super().__init__("model evaluation needed")
        self.x = x


class _ReplayNoise(NoiseSource):
    """Normals drawn with the pipeline's generator and remembered, in the order drawn, for the current step, so that
    re-running a step after each new model output sees the same draws (``rewind`` before each attempt, ``clear``
    when the step completes)."""

    def __init__(self):
        self.generator = None
        self.draws: list[torch.Tensor] = []
        self.pos = 0

    def rewind(self) -> None:
        self.pos = 0

    def clear(self) -> None:
        self.draws, self.pos = [], 0

    def _draw(self, x):
        if self.pos == len(self.draws):
            self.draws.append(randn_tensor(x.shape, generator=self.generator, device=x.device, dtype=x.dtype))
        self.pos += 1
        return self.draws[self.pos - 1]

    def increment(self, i, ts, x):
        return self._draw(x)

    def normal(self, i, k, x):
        return self._draw(x)


def _snap(t: float, n: int) -> float:
    """A time that is a training-grid point up to round-off becomes that grid point exactly."""
    k = round(t * n)
    return k / n if abs(t * n - k) < 1e-6 else t


def _final_target(ref) -> tuple[str, float | None]:
    """Where the replaced scheduler's last step goes: ``("denoise", None)`` (noise level zero) or ``("t", alpha^2)``
    of its final ``alphas_cumprod``; from its ``sigmas`` (VE noise levels, k-diffusion family) or its
    ``final_alpha_cumprod`` (DDIM/PNDM family); schedulers with neither (DDPM) end at ``alpha = 1``."""
    sigmas = getattr(ref, "sigmas", None)
    if isinstance(sigmas, torch.Tensor) and sigmas.ndim == 1 and sigmas.numel() > 0:
        s = float(sigmas[-1])
        return ("denoise", None) if s == 0.0 else ("t", 1.0 / (1.0 + s * s))
    final = getattr(ref, "final_alpha_cumprod", None)
    if final is not None:
        ac = float(final)
        return ("denoise", None) if ac >= 1.0 else ("t", ac)
    return ("denoise", None)


class SDEScheduler(SchedulerMixin, ConfigMixin):  # type: ignore[misc]  # (diffusers: config_name str vs None)
    r"""A diffusers scheduler that runs one of our fixed-grid solvers inside an unchanged diffusers pipeline.

    ```python
    pipe.scheduler = SDEScheduler.from_config(pipe.scheduler.config, solver="unipc", predictor_order=3)
    images = pipe(prompt, num_inference_steps=10).images
    ```

    ``from_config`` keeps the betas, ``prediction_type`` and thresholding settings of the replaced scheduler, takes
    ``solver`` and ``grid`` and passes every other keyword (``predictor_order=3``, ``update=...``) to the solver
    ([`get_solver`][sde_diffusion.solvers.base.get_solver]); the replaced scheduler's config is kept as
    ``reference`` so that ``grid="diffusers"`` can use its timesteps.

    Args:
        num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr: the
            training schedule, read by [`betas_from_config`][sde_diffusion.schedules.betas_from_config].
        prediction_type: ``epsilon``, ``sample`` or ``v_prediction`` (what the network predicts).
        thresholding, dynamic_thresholding_ratio, sample_max_value: dynamic thresholding of x0 predictions
            (diffusers' names; [`DynamicThresholding`][sde_diffusion.models.DynamicThresholding]).
        solver: a registry name (any fixed-grid solver; adaptive ones choose their own steps and are refused).
        solver_options: the solver's options.
        grid: ``"diffusers"`` (default): the times at which the replaced scheduler (``reference``; DDIM's when there
            is none) evaluates the network, plus its final target (noise level zero, i.e. one final x0 prediction,
            or its final ``alphas_cumprod``); or any of our grid names (``"logsnr"``, ``"karras"``, ...) with
            ``num_inference_steps`` intervals from ``t_max`` to ``t_min``.
        denoise_to_zero: finish with one x0 prediction; ``None`` follows the reference for ``grid="diffusers"`` and
            means ``False`` for our grids.
        reference: the replaced scheduler's config (set by ``from_config``).

    **How a step works.** ``set_timesteps`` builds the grid and records, with a dry run of the solver on a dummy
    model, every time at which the solver will evaluate the network; ``timesteps`` lists their labels ``N t - 1``
    (int64 when all are integers). The pipeline evaluates the network at each of them and calls ``step``: the
    scheduler re-runs the current solver step with the outputs it has received so far (the arithmetic of a step is
    negligible next to a network call) until the step either needs the next output -- then ``step`` returns the state
    at which the solver wants it -- or completes. So solvers with several evaluations per step (Heun, singlestep
    DPM-Solver, RK) run as diffusers' own Heun/KDPM2 schedulers do, one pipeline iteration per evaluation, and the
    result equals our own [`sample`][sde_diffusion.sample.sample] on the same grid. ``order`` is the number of
    evaluations per step when all steps have the same count.

    **Supported.** Text/class conditioning and classifier-free guidance as the pipeline does them; ``generator``
    for stochastic solvers; ``prediction_type``; dynamic thresholding; learned-variance outputs (mean part);
    img2img ``strength`` (``set_begin_index`` + ``add_noise``: the solver restarts on the rest of the grid, as
    diffusers' multistep schedulers do); inpainting pipelines that overwrite the state between steps, when the
    state is replaced at the start of a step.

    **Not supported (clear errors).** Adaptive solvers; inversion (``ddim_inverse``); custom ``sigmas``; a begin
    index inside a multi-evaluation step; a state changed by the pipeline in the middle of a multi-evaluation step;
    ``clip_sample`` of DDIM/DDPM configs is not applied (use ``thresholding``).
    """

    _compatibles: list[str] = []
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: list | None = None,
        prediction_type: str = "epsilon",
        rescale_betas_zero_snr: bool = False,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        solver: str = "dpm_solver++",
        solver_options: dict | None = None,
        grid: str = "diffusers",
        denoise_to_zero: bool | None = None,
        reference: dict | None = None,
    ):
        self.schedule = schedule_from_config(self.config)
        self.prediction = prediction_from_config(self.config)
        self.solver = get_solver(solver, **(solver_options or {}))
        if self.solver.adaptive:
            raise ValueError(
                f"solver {solver!r} is adaptive (it chooses its own steps); SDEScheduler runs fixed-grid solvers: "
                f"{', '.join(fixed_grid_solvers())}"
            )
        if self.solver.direction != "backward":
            raise ValueError(f"solver {solver!r} integrates forward in time (inversion); SDEScheduler samples")
        self.thresholder = DynamicThresholding(dynamic_thresholding_ratio, sample_max_value) if thresholding else None
        self.init_noise_sigma = 1.0  # VP: x_T ~ N(0, I) with no scaling
        self.timesteps: torch.Tensor | None = None
        self.num_inference_steps: int | None = None
        self._begin_index: int | None = None
        self._ts: torch.Tensor | None = None
        self._denoise = False
        self._eval_steps: list[int] = []  # solver step index of each evaluation (-1: the final denoising)
        self._run: dict | None = None

    # ---- diffusers' construction protocol ----------------------------------------------------------------------
    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """Build from a diffusers scheduler config, or from a scheduler itself (``from_config(pipe.scheduler)``,
        which also names its class when the config does not -- a config only carries ``_class_name`` once saved or
        loaded); keywords that are not ``__init__`` arguments are solver options
        (``from_config(cfg, solver="unipc", predictor_order=3)``)."""
        if isinstance(config, SchedulerMixin):
            config = {**config.config, "_class_name": type(config).__name__}
        config = {k: v for k, v in dict(config or {}).items() if k != "_use_default_values"}
        init_keys = set(inspect.signature(cls.__init__).parameters) - {"self"}
        options = {k: kwargs.pop(k) for k in list(kwargs) if k not in init_keys}
        ours = config.get("_class_name") == cls.__name__
        same_solver = ours and kwargs.get("solver", config.get("solver")) == config.get("solver")
        if options or not same_solver:
            base = dict(config.get("solver_options") or {}) if same_solver else {}
            kwargs.setdefault("solver_options", {**base, **options})
        if not ours and "reference" not in kwargs:
            if "_class_name" not in config:
                logger.warning(
                    "the config names no scheduler class: grid='diffusers' uses DDIMScheduler's timesteps for it "
                    "(pass the scheduler itself, SDEScheduler.from_config(pipe.scheduler, ...), to keep its own)"
                )
            kwargs["reference"] = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in config.items()}
        # our own keys only: the replaced scheduler's other settings live in `reference`
        config = {k: v for k, v in config.items() if k in init_keys}
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def __len__(self) -> int:
        return self.config["num_train_timesteps"]

    # ---- grid and evaluation times -------------------------------------------------------------------------------
    def _reference_scheduler(self):
        """The replaced scheduler (``reference``), or DDIM with the reference's settings (or our betas) when the
        reference names no diffusers scheduler class."""
        ref = dict(self.config.reference or {})
        cls = getattr(diffusers, str(ref.get("_class_name", "")), None)
        if cls is None or not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)) or cls is SDEScheduler:
            cls = diffusers.DDIMScheduler
            betas = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
            keys = set(inspect.signature(cls.__init__).parameters)
            ref = {**{k: self.config[k] for k in betas}, **{k: v for k, v in ref.items() if k in keys}}
        return cls.from_config(ref)

    def _diffusers_grid(self, n: int | None, timesteps) -> tuple[torch.Tensor, bool]:
        """(times of the grid, whether to finish with a denoising) for ``grid="diffusers"`` or custom timesteps."""
        if timesteps is not None:
            labels = torch.as_tensor(timesteps, dtype=torch.float64).flatten()
            target: tuple[str, float | None] = ("denoise", None)
        else:
            ref = self._reference_scheduler()
            ref.set_timesteps(n)
            labels = ref.timesteps.to(torch.float64)
            if getattr(ref, "order", 1) > 1:  # (Heun/KDPM2 repeat each timestep once per evaluation)
                keep = torch.ones_like(labels, dtype=torch.bool)
                keep[1:] = labels[1:] != labels[:-1]
                labels = labels[keep]
            target = _final_target(ref)
        sch = self.schedule
        ts = timestep_to_t(sch, labels)
        if target[0] == "t":
            ac = target[1]
            assert ac is not None
            t_end = _snap(float(sch.inverse_lambda(0.5 * math.log(ac / (1.0 - ac)))), sch.num_steps)
            if t_end < float(ts[-1]) - 1e-12:
                ts = torch.cat([ts, ts.new_tensor([max(t_end, sch.t_min)])])
            denoise = False
        else:
            denoise = True
        if self.config["denoise_to_zero"] is not None:
            denoise = self.config["denoise_to_zero"]
        return ts, denoise

    def _sampler(self, model: Model, x: torch.Tensor, ts: torch.Tensor, **noise) -> Sampler:
        own = self.solver.own_grid(self.schedule, None, None) is not None
        return Sampler(model, x, solver=self.solver, grid=None if own else ts, **noise)

    def _dry_run(self, ts: torch.Tensor, denoise: bool) -> list[tuple[int, float]]:
        """(solver step, time) of every network evaluation, from a run on a dummy model (the evaluation times of a
        fixed-grid solver depend on the grid only)."""
        record: list[float] = []

        def fn(x, t):
            record.append(float(t[0]))
            return torch.zeros_like(x)

        model = Model(fn, self.schedule, self.prediction)
        x = torch.zeros(1, 1, dtype=torch.float64)
        s = self._sampler(model, x, ts, noise=None, generator=torch.Generator().manual_seed(0))
        x, state = s.init(x)
        evals = []
        for i in range(s.num_steps):
            before = len(record)
            x, state = s.step(x, state, i)
            evals += [(i, t) for t in record[before:]]
        if denoise:
            before = len(record)
            s.denoise(x)
            evals += [(-1, t) for t in record[before:]]
        return evals

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """Prepare a run of ``num_inference_steps`` (or on custom integer ``timesteps``, decreasing, finishing
        with a denoising step)."""
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("give exactly one of num_inference_steps or timesteps")
        own = self.solver.own_grid(self.schedule, None, None)
        if own is not None:  # (e.g. dpm_solver_fast: its NFE budget fixes the grid; num_inference_steps is unused)
            if timesteps is not None:
                raise ValueError(f"solver {self.solver.name!r} fixes its own grid: custom timesteps cannot be used")
            ts, denoise = own, bool(self.config["denoise_to_zero"])
        elif timesteps is not None or self.config["grid"] == "diffusers":
            ts, denoise = self._diffusers_grid(num_inference_steps, timesteps)
        else:
            from ..grids import make_grid

            ts = make_grid(self.schedule, self.config["grid"], num_inference_steps)
            denoise = bool(self.config["denoise_to_zero"])
        self._setup(ts, denoise)
        self._full = (ts, denoise, self._eval_steps, self._eval_times)
        self.num_inference_steps = len(ts) - 1 + int(self._denoise)
        self.timesteps = self._labels(device)
        self._host_labels = self._labels("cpu").tolist()
        self._begin_index = None

    def _setup(self, ts: torch.Tensor, denoise: bool) -> None:
        self._ts, self._denoise = ts, denoise
        evals = self._dry_run(ts, denoise)
        self._eval_steps = [i for i, _ in evals]
        self._eval_times = torch.tensor([t for _, t in evals], dtype=torch.float64)
        self._total_evals = len(evals)
        # evaluations per step when every step but a cheaper last one (Heun's final Euler step) has the same count
        counts = [self._eval_steps.count(i) for i in range(len(ts) - 1)]
        uniform = counts and counts[0] > 0 and all(c == counts[0] for c in counts[:-1]) and counts[-1] <= counts[0]
        self.order = counts[0] if uniform else 1
        self._run = None

    def _labels(self, device) -> torch.Tensor:
        labels = t_to_timestep(self.schedule, self._eval_times)
        if bool(torch.all((labels - labels.round()).abs() < 1e-6)):
            return labels.round().to(device=device, dtype=torch.int64)
        return labels.to(device=device, dtype=torch.float32)

    # ---- the pipeline-facing API -------------------------------------------------------------------------------
    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    @property
    def step_index(self) -> int | None:
        return None if self._run is None else self._run["k"]

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at evaluation ``begin_index`` (img2img ``strength``): it must be the first evaluation of a step;
        the solver then runs on the rest of the grid from a fresh start."""
        if self.timesteps is None:
            raise RuntimeError("call set_timesteps before set_begin_index")
        ts, denoise, steps, times = self._full  # (a later call starts from the whole grid again)
        self._setup(ts, denoise)
        self._begin_index = begin_index
        if begin_index == 0:
            return
        k = begin_index
        if not 0 <= k < len(steps) or steps[k] < 0 or steps[k - 1] == steps[k]:
            raise ValueError(
                f"begin index {k} is not the first evaluation of a solver step of {self.solver.name!r}: a pipeline "
                "may only start at a step boundary (img2img strength works with solvers of one evaluation per step, "
                f"or when order={self.order} evaluations make every step)"
            )
        j = steps[k]
        self._setup(ts[j:], denoise)
        if self._eval_times.shape != times[k:].shape or not bool(torch.all(self._eval_times == times[k:])):
            raise ValueError(
                f"solver {self.solver.name!r} evaluates at other times when restarted at step {j}; start at 0 or "
                "use a solver of one evaluation per step"
            )
        self._total_evals = begin_index + len(self._eval_steps)

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """VP state, no input scaling."""
        return sample

    def _alpha_sigma(self, timesteps, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = timestep_to_t(self.schedule, torch.as_tensor(timesteps).detach().to("cpu", torch.float64).flatten())
        a, s = self.schedule.alpha(t), self.schedule.sigma(t)
        shape = (-1,) + (1,) * (like.ndim - 1)
        return (a.to(like.device, like.dtype).reshape(shape), s.to(like.device, like.dtype).reshape(shape))

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """``alpha(t) x0 + sigma(t) noise`` at the times of the labels ``timesteps``."""
        a, s = self._alpha_sigma(timesteps, original_samples)
        return a * original_samples + s * noise

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        generator: torch.Generator | list | None = None,
        return_dict: bool = True,
        **kwargs,
    ) -> SchedulerOutput | tuple:
        """Take the network's output at ``timesteps[k]`` and return the state at which the next evaluation is
        wanted (after the last evaluation: the final sample)."""
        if self.timesteps is None:
            raise RuntimeError("call set_timesteps before step")
        run = self._run
        if run is None:
            run = self._start(sample)
        elif run["k"] >= self._total_evals:
            raise RuntimeError(f"step called {run['k'] + 1} times for {self._total_evals} timesteps")
        elif sample is not run["returned"] and not torch.equal(sample, run["returned"]):
            if run["pending_is_start"]:
                run["x"] = sample
            else:
                raise RuntimeError(
                    "the pipeline changed the sample in the middle of a multi-evaluation step of "
                    f"{self.solver.name!r}; state edits between steps (inpainting) need a solver with one "
                    "evaluation per step"
                )
        self._check_timestep(timestep, run["k"])
        run["noise"].generator = generator
        run["outs"].append(_mean_part(model_output, sample))
        run["k"] += 1
        x = self._advance(run)
        run["returned"] = x
        if not return_dict:
            return (x,)
        return SchedulerOutput(prev_sample=x)

    def _check_timestep(self, timestep, k: int) -> None:
        """The pipeline must step in the order of ``timesteps`` (checked unless reading ``timestep`` would
        synchronise a device)."""
        if isinstance(timestep, torch.Tensor):
            if timestep.device.type != "cpu" or timestep.numel() != 1:
                return
            timestep = float(timestep)
        if not isinstance(timestep, (int, float)):
            return
        want = self._host_labels[k]
        if abs(timestep - want) > 1e-3 * max(1.0, abs(want)):
            raise ValueError(
                f"step {k} got timestep {timestep}, but timesteps[{k}] = {want}: SDEScheduler must be stepped once "
                "per entry of its timesteps, in order"
            )

    # ---- the replay ------------------------------------------------------------------------------------------------
    def _start(self, sample: torch.Tensor) -> dict:
        noise = _ReplayNoise()
        run: dict = {"outs": [], "cursor": 0, "noise": noise, "k": self._begin_index or 0}

        def replay(x, t):
            j = run["cursor"]
            if j == len(run["outs"]):
                raise _NeedEvaluation(x)
            run["cursor"] = j + 1
            return run["outs"][j]

        model = Model(replay, self.schedule, self.prediction, thresholding=self.thresholder)
        assert self._ts is not None, "set_timesteps first"
        sampler = self._sampler(model, sample, self._ts, noise=noise)
        x, state = sampler.init(sample)
        run.update(sampler=sampler, x=x, state=state, i=0, returned=sample, pending_is_start=True)
        self._run = run
        return run

    def _advance(self, run: dict) -> torch.Tensor:
        s = run["sampler"]
        while True:
            run["cursor"] = 0
            run["noise"].rewind()
            try:
                if run["i"] < s.num_steps:
                    x, state = s.step(run["x"], run["state"], run["i"])
                elif self._denoise and run["i"] == s.num_steps:
                    x, state = s.denoise(run["x"]), run["state"]
                else:
                    return run["x"]
            except _NeedEvaluation as need:
                run["pending_is_start"] = need.x is run["x"]
                return need.x
            run.update(x=x, state=state, i=run["i"] + 1, outs=[])
            run["noise"].clear()


def fixed_grid_solvers() -> list[str]:
    """Names of the registered solvers [`SDEScheduler`][sde_diffusion.interop.diffusers.SDEScheduler] can run."""
    from ..solvers import registered_solvers

    return sorted(
        name for name, cls in registered_solvers().items() if not cls.adaptive and cls.direction == "backward"
    )
