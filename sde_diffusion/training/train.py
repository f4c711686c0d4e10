r"""Training loop: AdamW, EMA of the weights, gradient clipping, mixed precision on CUDA, atomic resumable
checkpoints, and exact reproducibility from a seed on CPU.

[`train`][sde_diffusion.training.train.train] minimises one of the objectives of
[`sde_diffusion.training.losses`][sde_diffusion.training.losses] on batches drawn on the fly from a
data sampler (a name from [`sde_diffusion.training.data.DATASETS`][sde_diffusion.training.data.DATASETS] or any ``fn(n,
generator) -> tensor``). All
randomness of a step (data, times, noise) comes from one `torch.Generator` seeded with ``config.seed``; its
state is saved in every checkpoint together with the global torch RNG state (used by dropout), so a resumed run
continues exactly where the interrupted one stopped.

Update rule per step ``n`` (0-based): learning rate ``lr (n+1)/warmup_steps`` during warm-up, then constant or
cosine-decayed to 0 at ``config.steps``; gradients clipped to global
norm ``grad_clip``; AdamW step (Loshchilov & Hutter 2019, arXiv:1711.05101); then the EMA
``theta_ema <- d theta_ema + (1 - d) theta`` with ``d = min(ema_decay, (1 + n)/(10 + n))``.

A checkpoint (a plain ``torch.save`` dictionary that loads with ``weights_only=True``) holds the network, EMA and
optimizer states, the step, RNG states, the config, the loss history, the schedule (class and parameters), the
prediction type and the network's class and constructor config, and a SHA-256 checksum of all of that
([`payload_checksum`][sde_diffusion.training.train.payload_checksum]), verified by
[`load_checkpoint`][sde_diffusion.training.train.load_checkpoint]: a flipped byte anywhere in the payload is a
[`CheckpointError`][sde_diffusion.training.train.CheckpointError] naming the file, never silently wrong weights.
[`load_model`][sde_diffusion.training.train.load_model] turns it back into a
[`Model`][sde_diffusion.models.Model] with the EMA weights.

Resuming (``train(..., checkpoint=path)`` with an existing ``path``) checks every setting that defines the run --
[`RUN_SETTINGS`][sde_diffusion.training.train.RUN_SETTINGS]: the schedule and its parameters, the data set, its options
and shape, the network's class,
configuration and parameter shapes, the prediction type, the time input and the
[`TrainConfig`][sde_diffusion.training.train.TrainConfig] fields of
[`RESUME_KEYS`][sde_diffusion.training.train.RESUME_KEYS] (loss, lr, batch size, seed, optimizer and EMA settings) --
and refuses a mismatch with a
[`CheckpointMismatch`][sde_diffusion.training.train.CheckpointMismatch] naming each differing setting, before anything
is written. What may change on resume:
``steps`` (more or fewer total steps), ``checkpoint_every``, ``log_every``, ``stop_at``, ``mixed_precision``, the
device and the progress bar.

SIGINT (Ctrl-C) and SIGTERM during [`train`][sde_diffusion.training.train.train] (from the main thread) finish the
current step, write the
checkpoint atomically and raise [`TrainingInterrupted`][sde_diffusion.training.train.TrainingInterrupted]; a second
signal acts immediately. Temporary files
``<checkpoint>.*.tmp`` left by a process killed while saving are removed by the next
[`train`][sde_diffusion.training.train.train] with that
checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import glob
import hashlib
import math
import os
import pickle
import signal
import struct
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import schedules as _schedules
from ..distributed import AgreedStop, training_shard
from ..models import Model, check_prediction
from ..schedules import NoiseSchedule, VPDiscrete
from .data import get_dataset
from .losses import get_loss
from .nets import NETS, build_net

__all__ = [
    "TrainConfig",
    "TrainResult",
    "train",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "schedule_spec",
    "schedule_from_spec",
    "time_input_map",
    "TIME_INPUTS",
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "CheckpointMismatch",
    "TrainingInterrupted",
    "payload_checksum",
    "remove_stale_temporaries",
    "RESUME_KEYS",
    "RUN_SETTINGS",
]

#: format tag of the checkpoints written now (with a payload checksum); ``.../1`` files (no checksum) still load
CHECKPOINT_FORMAT = "sde_diffusion.train/2"
_LEGACY_FORMATS = ("sde_diffusion.train/1",)
#: [`TrainConfig`][sde_diffusion.training.train.TrainConfig] fields that must agree between a checkpoint and the run
#: that resumes from it
RESUME_KEYS = (
    "batch_size",
    "loss",
    "loss_options",
    "seed",
    "lr",
    "weight_decay",
    "adam_betas",
    "warmup_steps",
    "lr_schedule",
    "ema_decay",
    "grad_clip",
)
#: every setting compared on resume (the config fields above and the run's other defining settings)
RUN_SETTINGS = (
    *RESUME_KEYS,
    "prediction",
    "time_input",
    "schedule",
    "data",
    "data_options",
    "data_shape",
    "net_class",
    "net_config",
    "parameter shapes",
)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: empty, not a checkpoint, unreadable or corrupted (checksum
    mismatch). The message names the file."""


class CheckpointMismatch(ValueError):
    """Resuming from a checkpoint whose run differs from this one; the message names every differing setting."""


class TrainingInterrupted(KeyboardInterrupt):
    """[`train`][sde_diffusion.training.train.train] stopped by SIGINT or SIGTERM after finishing a step and writing its
    checkpoint.

    Attributes:
        signum: the signal number (``signal.SIGINT`` or ``signal.SIGTERM``).
        step: steps done (the checkpoint's step).
        checkpoint: the checkpoint written (``None`` when ``train`` had no checkpoint path).
    """

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        self.signum, self.step, self.checkpoint = int(signum), int(step), checkpoint
        where = f"; wrote {checkpoint}" if checkpoint is not None else ""
        super().__init__(f"interrupted by {signal.Signals(signum).name} after step {step}{where}")


@dataclass
class TrainConfig:
    """Hyper-parameters of [`train`][sde_diffusion.training.train.train].

    Attributes:
        steps: total optimizer steps.
        batch_size: samples per step.
        lr: AdamW learning rate.
        weight_decay: AdamW decoupled weight decay.
        adam_betas: AdamW betas.
        warmup_steps: linear learning-rate warm-up length (0: none).
        lr_schedule: ``"constant"`` or ``"cosine"`` (after warm-up, ``lr (1 + cos(pi p))/2`` with ``p`` the
            fraction of the post-warm-up steps done).
        ema_decay: EMA decay ``d`` (with the ``(1+n)/(10+n)`` warm-up).
        grad_clip: maximal global gradient norm (``None``: no clipping).
        loss: objective name from [`sde_diffusion.training.losses.LOSSES`][sde_diffusion.training.losses.LOSSES].
        loss_options: keyword options of the objective (e.g. ``{"weighting": "likelihood"}``).
        seed: seed of the training generator.
        checkpoint_every: save a checkpoint every this many steps (0: only at the end).
        log_every: how often the loss history is synchronised (and the progress bar updated).
        mixed_precision: use ``torch.autocast`` (bfloat16 where supported, else float16 with a gradient scaler);
            only ever active on CUDA.
    """

    steps: int = 2000
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    ema_decay: float = 0.999
    grad_clip: float | None = 1.0
    loss: str = "simple"
    loss_options: dict = field(default_factory=dict)
    seed: int = 0
    checkpoint_every: int = 0
    log_every: int = 25
    mixed_precision: bool = True

    def __post_init__(self):
        for name in ("steps", "batch_size", "warmup_steps", "checkpoint_every", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if isinstance(self.log_every, bool) or not isinstance(self.log_every, int) or self.log_every < 1:
            raise ValueError(f"log_every must be a positive integer, got {self.log_every!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip!r}")
        self.adam_betas = tuple(float(b) for b in self.adam_betas)
        self.loss_options = dict(self.loss_options)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class TrainResult:
    """What [`train`][sde_diffusion.training.train.train] returns.

    Attributes:
        model: the EMA network wrapped as a [`Model`][sde_diffusion.models.Model] (eval mode).
        net: the trained (raw) network.
        ema_net: the EMA network.
        losses: loss of every step since step 0 (floats).
        step: number of steps done.
        config: the configuration used.
        checkpoint: path of the last checkpoint written (or ``None``).
    """

    model: Model
    net: nn.Module
    ema_net: nn.Module
    losses: list[float]
    step: int
    config: TrainConfig
    checkpoint: Path | None


# ---------------------------------------------------------------------------------------------------------------------
# schedules <-> plain data
# ---------------------------------------------------------------------------------------------------------------------

_SCHEDULE_CLASSES = {
    name: getattr(_schedules, name)
    for name in ("VPLinear", "VPCosine", "VPDiscrete", "SubVPLinear", "VEGeometric", "EDM")
}


def schedule_spec(schedule: NoiseSchedule) -> dict[str, Any]:
    """A plain-data description of a built-in schedule (class name and constructor arguments)."""
    name = type(schedule).__name__
    if isinstance(schedule, VPDiscrete):
        return {
            "class": name,
            "alphas_cumprod": schedule.alphas_cumprod.clone(),
            "t_min": schedule.t_min,
            "t_max": schedule.t_max,
        }
    return {"class": name, **schedule.params()}


def schedule_from_spec(spec: dict[str, Any]) -> NoiseSchedule:
    """Inverse of [`schedule_spec`][sde_diffusion.training.train.schedule_spec]."""
    spec = dict(spec)
    name = spec.pop("class")
    if name not in _SCHEDULE_CLASSES:
        raise ValueError(f"cannot rebuild schedule {name!r}; pass schedule= explicitly")
    return _SCHEDULE_CLASSES[name](**spec)


TIME_INPUTS = ("t", "logsnr")


def time_input_map(schedule: NoiseSchedule, kind: str = "t") -> str | Callable:
    r"""What the network is fed as its time input (for ``Model(..., time_input=...)``).

    ``"t"``: the schedule's time itself. ``"logsnr"``: ``u = (lambda_max - lambda(t))/(lambda_max - lambda_min)``,
    the half log-SNR mapped affinely onto ``[0, 1]`` (0 at ``t_min``, 1 at ``t_max``). The second spreads the
    low-noise end, where ``t`` itself changes very little while ``lambda`` changes a lot (for VP-linear,
    ``t`` in ``[1e-3, 0.05]`` covers 29% of the ``lambda`` range and ``[1e-3, 0.3]`` half of it).
    """
    if kind == "t":
        return "continuous"
    if kind == "logsnr":
        lam_max, lam_min = schedule.lambda_max, schedule.lambda_min
        span = lam_max - lam_min

        def to_u(t: torch.Tensor) -> torch.Tensor:
            return (lam_max - schedule.lambda_unchecked(t)) / span

        return to_u
    raise ValueError(f"time_input must be one of {TIME_INPUTS}, got {kind!r}")


# ---------------------------------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------------------------------


def _feed(h, obj) -> None:
    """Feed a canonical byte encoding of ``obj`` (nested dicts, lists, tensors and scalars) into hash ``h``."""
    if torch.is_tensor(obj):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(b"D%d" % len(obj))
        for k in sorted(obj, key=repr):
            _feed(h, k)
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(b"L%d" % len(obj) if isinstance(obj, list) else b"U%d" % len(obj))
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, float):
        h.update(b"F" + struct.pack("<d", obj))
    elif obj is None or isinstance(obj, (bool, int, str, bytes)):
        h.update(f"S{type(obj).__name__}:{obj!r}".encode())
    else:
        raise TypeError(f"cannot checksum a {type(obj).__name__} in a checkpoint")


def payload_checksum(state: dict[str, Any]) -> str:
    """SHA-256 (hex) of a canonical encoding of a checkpoint's contents (every key but ``"checksum"``): tensors by
    dtype, shape and raw bytes, containers in key order, scalars exactly."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != "checksum"})
    return h.hexdigest()


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` and its [`payload_checksum`][sde_diffusion.training.train.payload_checksum] (key ``"checksum"``)
    with ``torch.save`` atomically: to a
    temporary file ``<path>.<random>.tmp`` in the same directory, flushed and fsync'ed, then ``os.replace``-d over
    ``path`` (so a crash never leaves a truncated checkpoint)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {**state, "checksum": payload_checksum(state)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files ``<path>.*.tmp`` that a process killed inside
    [`save_checkpoint`][sde_diffusion.training.train.save_checkpoint] left
    behind; returns what was removed."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f"{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by [`train`][sde_diffusion.training.train.train] (``weights_only=True``: plain data and
    tensors only) and verify
    its checksum.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is empty, not a readable ``torch.save`` file, not a training checkpoint, or its
            contents do not match the checksum stored when it was written (corrupted); the message names the file.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), not a checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # not a pickle, or one with objects weights_only=True refuses to build
        raise CheckpointError(
            f"{path} is not a readable checkpoint (not a torch.save file of plain data and tensors)"
        ) from None
    except Exception as e:  # torch raises many types here (RuntimeError for a torn zip, EOFError, ...)
        reason = (str(e).strip().splitlines() or [""])[0][:100]
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: {reason})") from None
    if not isinstance(state, dict) or state.get("format") not in (CHECKPOINT_FORMAT, *_LEGACY_FORMATS):
        raise CheckpointError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    if state["format"] == CHECKPOINT_FORMAT:
        try:
            actual = payload_checksum(state)
        except TypeError as e:
            raise CheckpointError(f"{path} is corrupted: {e}") from None
        if state.get("checksum") != actual:
            raise CheckpointError(
                f"{path} is corrupted: its contents do not match the checksum stored when it was written"
            )
    return state


def load_model(
    path: str | os.PathLike,
    *,
    net: nn.Module | None = None,
    schedule: NoiseSchedule | None = None,
    ema: bool = True,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Model:
    """Rebuild the trained [`Model`][sde_diffusion.models.Model] from a checkpoint: the EMA weights (or the raw ones
    with ``ema=False``), the recorded schedule and prediction type.

    Args:
        path: checkpoint file.
        net: a network to load the weights into (default: rebuilt from the recorded class and config, in the dtype
            it was trained in; this works for the networks of
            [`sde_diffusion.training.nets.NETS`][sde_diffusion.training.nets.NETS]).
        schedule: override the recorded schedule (needed for schedules that are not built in).
        ema: load the EMA weights.
        device: where to put the network.
        dtype: cast the network to this dtype.
    """
    state = load_checkpoint(path)
    if net is None:
        cls, cfg = state.get("net_class"), state.get("net_config")
        if cls not in NETS or cfg is None:
            raise ValueError(f"the checkpoint's network {cls!r} cannot be rebuilt; pass net=")
        net = build_net(cls, cfg)
        stored = [v.dtype for v in state["net"].values() if torch.is_tensor(v) and v.is_floating_point()]
        if stored:
            net = net.to(stored[0])  # as trained, whatever the default dtype is now
    net.load_state_dict(state["ema" if ema else "net"])
    if device is not None or dtype is not None:
        net = net.to(device=device, dtype=dtype)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    sch = schedule if schedule is not None else schedule_from_spec(state["schedule"])
    return Model(net, sch, state["prediction"], time_input=time_input_map(sch, state.get("time_input", "t")))


# ---------------------------------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------------------------------


def _shapes(state_dict: dict[str, Any]) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in state_dict.items() if torch.is_tensor(v)}


def _same(a: Any, b: Any) -> bool:
    """Equality of plain data with tensors inside (same dtype, shape and values)."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu())
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def _short(v: Any) -> str:
    if torch.is_tensor(v):
        return f"tensor{list(v.shape)}"
    if isinstance(v, dict):
        text = "{" + ", ".join(f"{k}: {_short(x)}" for k, x in v.items()) + "}"
        return text if len(text) <= 160 else text[:157] + "..."
    return repr(v)


def checkpoint_settings(state: dict[str, Any]) -> dict[str, Any]:
    """The [`RUN_SETTINGS`][sde_diffusion.training.train.RUN_SETTINGS] recorded in a checkpoint (those a legacy
    checkpoint lacks are left out)."""
    out = {k: v for k, v in TrainConfig.from_dict(state["config"]).to_dict().items() if k in RESUME_KEYS}
    for key in RUN_SETTINGS[len(RESUME_KEYS) :]:
        if key == "parameter shapes":
            out[key] = _shapes(state["net"])
        elif key in state:
            out[key] = state[key]
    return out


def check_resume(state: dict[str, Any], settings: dict[str, Any], path: Path) -> None:
    """Raise [`CheckpointMismatch`][sde_diffusion.training.train.CheckpointMismatch] naming every setting of
    [`RUN_SETTINGS`][sde_diffusion.training.train.RUN_SETTINGS] on which the checkpoint
    ``state`` (read from ``path``) and this run's ``settings`` differ."""
    recorded = checkpoint_settings(state)
    diffs = [
        f"{k} (checkpoint {_short(recorded[k])}, this run {_short(settings[k])})"
        for k in RUN_SETTINGS
        if k in recorded and not _same(recorded[k], settings[k])
    ]
    if diffs:
        raise CheckpointMismatch(
            f"cannot resume from {path}: it was trained with other settings: {'; '.join(diffs)}. The checkpoint is "
            "unchanged; resume with its settings, or start afresh elsewhere (or with resume=False)"
        )


class StopOnSignals:
    """Context manager: while active (and entered from the main thread), the first SIGINT or SIGTERM only sets
    ``signum`` (the loop then finishes its step and stops); the previous handlers are then restored, so a second
    signal acts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def poll(self) -> int | None:
        """The signal received so far (``None``: none); one process's
        [`AgreedStop.poll`][sde_diffusion.distributed.AgreedStop.poll]."""
        return self.signum

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self._restore()


def _show_progress(progress: bool | None) -> bool:
    if progress is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(progress)


def _progress_bar(show: bool, total: int, initial: int):
    if not show:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is optional
        return None
    return tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True, leave=True)


@torch.no_grad()
def _ema_update(ema_net: nn.Module, net: nn.Module, decay: float) -> None:
    for e, p in zip(ema_net.parameters(), net.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)
    for e_buf, b in zip(ema_net.buffers(), net.buffers(), strict=True):
        e_buf.copy_(b)


def _learning_rate(cfg: TrainConfig, step: int) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "cosine":
        span = max(cfg.steps - cfg.warmup_steps, 1)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(step - cfg.warmup_steps, span) / span))
    return cfg.lr


def _rng_state(gen: torch.Generator, device: torch.device) -> dict[str, Any]:
    state = {"generator": gen.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(gen: torch.Generator, state: dict[str, Any], device: torch.device) -> None:
    gen.set_state(state["generator"].cpu())
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def train(
    net: nn.Module,
    schedule: NoiseSchedule,
    data: str | Callable,
    *,
    prediction: str = "eps",
    config: TrainConfig | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = True,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    stop_at: int | None = None,
    data_options: dict | None = None,
    time_input: str = "t",
    **overrides: Any,
) -> TrainResult:
    """Train ``net`` as a ``prediction``-type denoiser for ``schedule`` on ``data``.

    Args:
        net: the network ``fn(x, t)`` (e.g. [`MLPScoreNet`][sde_diffusion.training.nets.MLPScoreNet]); trained in place.
            Its
            parameter dtype sets the data dtype.
        schedule: the noise schedule (recorded in checkpoints).
        data: a data set name ([`sde_diffusion.training.data.DATASETS`][sde_diffusion.training.data.DATASETS]) or
            ``fn(n, generator) -> (n, ...)``.
        prediction: ``eps``, ``x0``, ``v`` or ``score``.
        config: a [`TrainConfig`][sde_diffusion.training.train.TrainConfig]; keyword ``overrides`` replace its fields.
        checkpoint: checkpoint path; written every ``config.checkpoint_every`` steps and at the end.
        resume: continue from ``checkpoint`` when it exists. Every setting of
            [`RUN_SETTINGS`][sde_diffusion.training.train.RUN_SETTINGS] must match the
            checkpoint's (else [`CheckpointMismatch`][sde_diffusion.training.train.CheckpointMismatch], the file
            untouched); ``steps``, ``checkpoint_every``,
            ``log_every``, ``stop_at``, ``mixed_precision``, the device and ``progress`` may change.
        device: training device (default: where ``net`` is).
        progress: tqdm progress bar with the loss; ``None`` shows it only when stderr is a terminal.
        stop_at: stop (and checkpoint) after this many total steps even if ``config.steps`` is larger -- for
            time-limited jobs; a later call with the same arguments resumes.
        data_options: keyword options of the named data set.
        time_input: the network's time input, ``"t"`` or ``"logsnr"`` (see
            [`time_input_map`][sde_diffusion.training.train.time_input_map]); recorded in
            checkpoints and restored by [`load_model`][sde_diffusion.training.train.load_model].
        **overrides: fields of [`TrainConfig`][sde_diffusion.training.train.TrainConfig].

    Raises:
        CheckpointError: ``checkpoint`` exists (and ``resume``) but is empty, unreadable or corrupted.
        CheckpointMismatch: ``checkpoint`` belongs to a run with other settings (see ``resume``).
        TrainingInterrupted: SIGINT or SIGTERM arrived; the step in progress was finished and the checkpoint
            written (a later call with the same arguments resumes from it).
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    check_prediction(prediction)
    time_map = time_input_map(schedule, time_input)
    unknown = sorted(set(overrides) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise TypeError(f"train() got unknown options {unknown}; valid: {[f.name for f in fields(TrainConfig)]}")
    if stop_at is not None and (isinstance(stop_at, bool) or not isinstance(stop_at, int) or stop_at < 0):
        raise ValueError(f"stop_at must be a non-negative integer or None, got {stop_at!r}")
    if config is not None and not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig or None, got {type(config).__name__}")
    cfg = TrainConfig.from_dict({**(config or TrainConfig()).to_dict(), **overrides})
    sampler = get_dataset(data, **(data_options or {}))
    loss_fn = get_loss(cfg.loss, **cfg.loss_options)

    params = list(net.parameters())
    if not params:
        raise ValueError("net has no parameters")
    device = torch.device(device) if device is not None else params[0].device
    net.to(device)
    param_dtype = next(net.parameters()).dtype
    ema_net = copy.deepcopy(net)
    for p in ema_net.parameters():
        p.requires_grad_(False)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
    use_amp = cfg.mixed_precision and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    step, losses = 0, []
    data_name = data if isinstance(data, str) else None
    # the shape of one data point, for samplers of the checkpoint (drawn with its own generator: the training
    # stream is untouched)
    data_shape = list(sampler(1, torch.Generator(device=gen.device).manual_seed(0)).shape[1:])
    sched_spec = (
        schedule_spec(schedule) if type(schedule).__name__ in _SCHEDULE_CLASSES else {"class": type(schedule).__name__}
    )
    settings = {
        **{k: v for k, v in cfg.to_dict().items() if k in RESUME_KEYS},
        "prediction": prediction,
        "time_input": time_input,
        "schedule": sched_spec,
        "data": data_name,
        "data_options": dict(data_options or {}),
        "data_shape": data_shape,
        "net_class": type(net).__name__,
        "net_config": getattr(net, "config", None),
        "parameter shapes": _shapes(net.state_dict()),
    }
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    if ckpt_path is not None:
        remove_stale_temporaries(ckpt_path)
    if ckpt_path is not None and resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, map_location=device)
        check_resume(state, settings, ckpt_path)
        net.load_state_dict(state["net"])
        ema_net.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(gen, state["rng"], device)
        step, losses = int(state["step"]), list(state["losses"])

    shard = training_shard(net, cfg.batch_size, device)  # DistributedDataParallel under torchrun, else None
    model = Model(net if shard is None else shard.rows_net, schedule, prediction, time_input=time_map)
    if shard is not None:  # this rank's rows of the global batch (every rank draws the whole batch)
        loss_fn = shard.loss(get_loss(cfg.loss, **cfg.loss_options, reduction="none"))

    def make_state() -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "net": net.state_dict(),
            "ema": ema_net.state_dict(),
            "optimizer": opt.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "rng": _rng_state(gen, device),
            "config": cfg.to_dict(),
            "losses": list(losses),
            "schedule": sched_spec,
            "prediction": prediction,
            "time_input": time_input,
            "net_class": type(net).__name__,
            "net_config": getattr(net, "config", None),
            "data": data_name,
            "data_options": dict(data_options or {}),
            "data_shape": data_shape,
        }

    last = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
    bar = _progress_bar(_show_progress(progress), cfg.steps, step)
    pending: list[torch.Tensor] = []
    written: Path | None = None

    def flush():
        if pending:
            values = torch.stack(pending) if shard is None else shard.average(torch.stack(pending))
            values = values.float().cpu().tolist()
            pending.clear()
            if not all(math.isfinite(v) for v in values):
                raise FloatingPointError(f"non-finite training loss near step {step}")
            losses.extend(values)
            if bar is not None:
                bar.update(len(values))
                bar.set_postfix(loss=f"{sum(values) / len(values):.4g}")

    net.train()
    try:
        with StopOnSignals() as signals:
            # with a shard, the ranks agree on the stop (they stop at the same step)
            stop: StopOnSignals | AgreedStop = signals if shard is None else shard.agreed(signals)
            while step < last and stop.poll() is None:
                lr = _learning_rate(cfg, step)
                for group in opt.param_groups:
                    group["lr"] = lr
                x0 = sampler(cfg.batch_size, gen).to(device=device, dtype=param_dtype)
                with torch.autocast(device_type="cuda", dtype=amp_dtype) if use_amp else contextlib.nullcontext():
                    loss = loss_fn(model, x0, gen)
                scaler.scale(loss).backward()
                if cfg.grad_clip is not None:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                _ema_update(ema_net, net, min(cfg.ema_decay, (1.0 + step) / (10.0 + step)))
                pending.append(loss.detach())
                step += 1
                if len(pending) >= cfg.log_every:
                    flush()
                periodic = cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < last
                if ckpt_path is not None and periodic and stop.signum is None:
                    flush()
                    written = save_checkpoint(make_state(), ckpt_path) if shard is None or shard.is_main else None
            flush()
            if ckpt_path is not None and (shard is None or shard.is_main):  # rank 0 writes
                written = save_checkpoint(make_state(), ckpt_path)
            if stop.signum is not None and step < last:
                raise TrainingInterrupted(stop.signum, step, written)
    finally:
        if bar is not None:
            bar.close()
    net.eval()
    ema_net.eval()
    return TrainResult(
        Model(ema_net, schedule, prediction, time_input=time_map), net, ema_net, losses, step, cfg, written
    )
