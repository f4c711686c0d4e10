r"""Scale-out with ``torch.distributed``: the commands run unchanged under ``torchrun --nproc_per_node=N``.

What this module provides (the CLI commands use it; nothing here is a process pool -- ``torchrun`` starts the
processes, one per rank):

* [`environment`][sde_diffusion.distributed.environment]: rank, world size and local rank from the variables that
  ``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); a plain ``python``/``sde-diffusion`` run is rank 0 of 1.
* [`Job`][sde_diffusion.distributed.Job]: a context manager that joins the process group (gloo on CPU, NCCL on CUDA,
  with a collective timeout) and leaves it, and that turns a failure of any rank into a non-zero exit of the whole
  job within a bounded time with that rank's error printed on rank 0's stderr. Every rank runs a watchdog thread on
  the job's key-value store: a rank that raises posts its error (rank 0 prints it and stops the job); a rank that
  stops beating (killed, or hung outside Python) is reported by rank 0 after ``heartbeat`` seconds.
* Sharding of samples by global index: [`sample_seed`][sde_diffusion.distributed.sample_seed] derives the seed of
  sample ``i`` from ``(seed, i)`` alone, and [`block_range`][sde_diffusion.distributed.block_range] gives each rank a
  contiguous run of fixed-size blocks of global indices. A block is one call of the sampler whichever rank runs it,
  so the union of the ranks' samples equals the single-process run bit for bit (on CPU; on GPU up to the
  non-determinism of the kernels).
* Shard files and their index: [`write_shard`][sde_diffusion.distributed.write_shard] (atomic, with a checksum),
  [`read_shard`][sde_diffusion.distributed.read_shard], [`write_index`][sde_diffusion.distributed.write_index] (rank 0,
  last, so a crashed run leaves no index claiming missing shards) and
  [`load_samples`][sde_diffusion.distributed.load_samples] (the samples of an index, in global order).
* [`shard_items`][sde_diffusion.distributed.shard_items] and
  [`merge_study_results`][sde_diffusion.distributed.merge_study_results]: the solvers of a study shared out among the
  ranks (every cell of one solver on one rank) and the parts joined on rank 0 in the single-process order.
* [`DataParallelRows`][sde_diffusion.distributed.DataParallelRows]: the network of one rank's rows of a global
  training batch (the rest of the batch's randomness is drawn on every rank, so DDP training follows the
  single-process run with the same global batch).

Timeouts: ``SDE_DIFFUSION_DIST_TIMEOUT`` (seconds, default 600) bounds every collective and the rendezvous;
``SDE_DIFFUSION_DIST_HEARTBEAT`` (seconds, default 60) is how long rank 0 waits for a silent rank.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "Dist",
    "environment",
    "Job",
    "sample_seed",
    "block_range",
    "shard_items",
    "shard_path",
    "write_shard",
    "read_shard",
    "write_index",
    "load_samples",
    "INDEX_NAME",
    "SHARD_FORMAT",
    "merge_study_results",
    "DataParallelRows",
    "TrainingShard",
    "AgreedStop",
    "training_shard",
    "collective_timeout",
    "heartbeat_timeout",
]

#: file name of the index of a sharded sampling run
INDEX_NAME = "samples.index.json"
#: format tag of shard files and of the index
SHARD_FORMAT = "sde_diffusion.samples/1"
_PEER_FAILED = 1  # exit status of a rank stopped because another rank failed


def collective_timeout() -> float:
    """Seconds a collective (and the rendezvous) may wait: ``SDE_DIFFUSION_DIST_TIMEOUT``, default 600."""
    return float(os.environ.get("SDE_DIFFUSION_DIST_TIMEOUT", "600"))


def heartbeat_timeout() -> float:
    """Seconds of silence after which rank 0 declares a rank dead: ``SDE_DIFFUSION_DIST_HEARTBEAT``, default 60."""
    return float(os.environ.get("SDE_DIFFUSION_DIST_HEARTBEAT", "60"))


class _RankOfJob:
    """``is_main`` and ``distributed`` of anything that knows its ``rank`` of ``world_size``."""

    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the rank that writes the results and reports)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether the job has more than one rank."""
        return self.world_size > 1


@dataclass(frozen=True)
class Dist(_RankOfJob):
    """Where this process sits in the job: ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def environment() -> Dist:
    """The rank, world size and local rank that ``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); rank 0
    of 1 when they are absent."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise ValueError(f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {e}") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return Dist(rank, world, local)


class Job(_RankOfJob):
    """Context manager around one command's work on one rank.

    On entry (only when ``WORLD_SIZE > 1``): the rendezvous of ``torchrun`` (``env://``), the default process group
    (gloo for ``device="cpu"``, NCCL for CUDA, on ``cuda:LOCAL_RANK``) with a [`collective_timeout`]
    [sde_diffusion.distributed.collective_timeout], and a watchdog thread. On a normal exit every rank marks itself
    done and rank 0 waits for all (so that it is alive to report a late failure); then the group is destroyed.

    Failure propagation (bounded time, no hang): a rank leaving with an exception posts its formatted error to the
    store and waits (at most the heartbeat timeout) until rank 0 has printed it; rank 0's watchdog prints
    ``sde-diffusion: rank K of N failed:`` and the error on its stderr and ends the process with status 1; the other
    ranks' watchdogs see the failure and end theirs with status 1 too. A rank that stops beating for
    [`heartbeat_timeout`][sde_diffusion.distributed.heartbeat_timeout] seconds (killed, or stuck outside Python) is
    reported the same way.
    """

    def __init__(self, device: str | torch.device = "cpu", *, interval: float = 0.25):
        self.env = environment()
        self.rank, self.world_size = self.env.rank, self.env.world_size
        self.requested_device = str(device)
        self.interval = float(interval)
        self.store: torch.distributed.Store | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- properties -------------------------------------------------------------------------------------------
    @property
    def _kv(self) -> torch.distributed.Store:
        """The job's key-value store (set by ``__enter__`` in a distributed job)."""
        assert self.store is not None, "the store exists only inside `with Job(...)` in a distributed job"
        return self.store

    @property
    def device(self) -> str:
        """The device of this rank: ``cuda`` becomes ``cuda:LOCAL_RANK`` in a distributed job."""
        if self.distributed and self.requested_device == "cuda":
            return f"cuda:{self.env.local_rank}"
        return self.requested_device

    # ---- collectives --------------------------------------------------------------------------------------------
    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 in rank order (``None`` on the others); ``[obj]`` in one process."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` on every rank, in rank order."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    # ---- entry and exit -----------------------------------------------------------------------------------------
    def __enter__(self) -> Job:
        if not self.distributed:
            return self
        import torch.distributed as dist

        timeout = dt.timedelta(seconds=collective_timeout())
        cuda = self.requested_device.startswith("cuda")
        if cuda:
            torch.cuda.set_device(self.env.local_rank)
        store, _, _ = next(dist.rendezvous("env://", self.rank, self.world_size, timeout=timeout))
        dist.init_process_group(
            "nccl" if cuda else "gloo",
            store=dist.PrefixStore("default_pg", store),
            rank=self.rank,
            world_size=self.world_size,
            timeout=timeout,
        )
        self.store = dist.PrefixStore("sde_diffusion", store)
        self._thread = threading.Thread(target=self._watch, name="sde-diffusion-watchdog", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.distributed:
            return
        import torch.distributed as dist

        try:
            if exc is None:
                self._kv.set(f"done/{self.rank}", "1")
                if self.is_main:  # stay alive (and watching) until every rank is done
                    while not all(self._kv.check([f"done/{r}"]) for r in range(self.world_size)):
                        time.sleep(self.interval)
            else:
                if self.is_main:  # rank 0 reports its own error: its watchdog must not race it
                    self._stop.set()
                self._post_failure(exc_type, exc, tb)
        finally:
            self._stop.set()
            if exc is None:
                dist.destroy_process_group()

    def _post_failure(self, exc_type, exc, tb) -> None:
        """Post this rank's error to the store; a rank other than 0 waits (bounded) until rank 0 printed it."""
        if getattr(exc, "one_line", False) or type(exc).__name__ == "UsageError":
            text = f"{exc}"
        else:
            text = "".join(traceback.format_exception(exc_type, exc, tb)).rstrip()
        try:
            self._kv.set(f"error/{self.rank}", text)
            self._kv.add("failures", 1)
            if self.is_main:
                self._kv.set("reported", "1")  # rank 0 prints its own error through the normal path
                return
            deadline = time.monotonic() + heartbeat_timeout()
            while time.monotonic() < deadline and not self._kv.check(["reported"]):
                time.sleep(self.interval)
        except Exception:  # the store is gone: nothing more to coordinate
            pass

    # ---- the watchdog -------------------------------------------------------------------------------------------
    def _watch(self) -> None:
        beats: dict[int, tuple[int, float]] = {}
        limit = heartbeat_timeout()
        try:
            while not self._stop.wait(self.interval):
                self._kv.add(f"beat/{self.rank}", 1)
                if self._kv.add("failures", 0) > 0:
                    self._stop_for_failure()
                    return
                if not self.is_main:
                    continue
                now = time.monotonic()
                for r in range(1, self.world_size):
                    if self._kv.check([f"done/{r}"]):
                        continue
                    count = self._kv.add(f"beat/{r}", 0)
                    if beats.get(r, (None,))[0] != count:
                        beats[r] = (count, now)
                    elif now - beats[r][1] > limit:
                        self._die(f"rank {r} of {self.world_size} stopped answering for {limit:g} s (killed, or hung)")
        except Exception as e:  # the store (hosted by torchrun's agent or by rank 0) is gone
            if not self._stop.is_set():
                self._die(f"rank {self.rank} lost contact with the job ({type(e).__name__}: {e})")

    def _stop_for_failure(self) -> None:
        failed = [r for r in range(self.world_size) if self._kv.check([f"error/{r}"])]
        if self.is_main:
            if failed == [0]:
                return  # rank 0's own error: printed by the normal exception path
            texts = [
                f"sde-diffusion: rank {r} of {self.world_size} failed:\n{self._kv.get(f'error/{r}').decode()}"
                for r in failed
                if r != 0
            ]
            self._kv.set("reported", "1")
            self._die("\n".join(texts))
        deadline = time.monotonic() + heartbeat_timeout()
        while time.monotonic() < deadline and not self._kv.check(["reported"]):
            time.sleep(self.interval)
        if self.rank not in failed:
            self._die(None)

    def _die(self, message: str | None) -> None:
        if message:
            print(message, file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(_PEER_FAILED)


# ---------------------------------------------------------------------------------------------------------------------
# sharding by global index
# ---------------------------------------------------------------------------------------------------------------------


def sample_seed(seed: int, index: int, stream: str = "sample") -> int:
    """The seed of item ``index`` of a run seeded with ``seed``: the first 63 bits of
    ``sha256("sde-diffusion {stream} {seed} {index}")`` -- a function of ``(seed, index)`` only, so a sample does not
    depend on the batch, the rank or the number of ranks that draws it (``stream`` separates independent uses,
    e.g. ``"sample"`` for start states by sample index and ``"noise"`` for a stochastic solver's noise by block)."""
    digest = hashlib.sha256(f"sde-diffusion {stream} {int(seed)} {int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def block_range(num_blocks: int, rank: int, world_size: int) -> range:
    """The contiguous blocks ``[lo, hi)`` of ``rank``: ``num_blocks`` shared out as evenly as possible (the first
    ``num_blocks % world_size`` ranks get one more)."""
    base, extra = divmod(int(num_blocks), int(world_size))
    lo = rank * base + min(rank, extra)
    return range(lo, lo + base + (1 if rank < extra else 0))


def shard_items(items: list, rank: int, world_size: int) -> list:
    """The contiguous part of ``items`` that ``rank`` runs (as
    [`block_range`][sde_diffusion.distributed.block_range] shares them out)."""
    return [items[i] for i in block_range(len(items), rank, world_size)]


# ---------------------------------------------------------------------------------------------------------------------
# shard files and their index
# ---------------------------------------------------------------------------------------------------------------------


def shard_path(out: str | os.PathLike, rank: int, world_size: int) -> Path:
    """``OUT/samples.shard-RRRRR-of-WWWWW.pt``."""
    return Path(out) / f"samples.shard-{rank:05d}-of-{world_size:05d}.pt"


def write_shard(path: str | os.PathLike, x: torch.Tensor, start: int, run: dict[str, Any], **extra: Any) -> str:
    """Write the samples ``x`` of global indices ``[start, start + len(x))`` of the run described by ``run``
    (plain data), and ``extra`` entries, atomically with a SHA-256 checksum of the payload; returns the checksum."""
    from .training.train import payload_checksum, save_checkpoint

    state = {"format": SHARD_FORMAT, "start": int(start), "stop": int(start) + len(x), "run": run, "x": x, **extra}
    save_checkpoint(state, path)
    return payload_checksum(state)


def read_shard(path: str | os.PathLike, run: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """A complete shard (its checksum verified, and written by the run ``run`` when given), else ``None``."""
    from .training.train import payload_checksum

    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception:
        return None
    if not isinstance(state, dict) or state.get("format") != SHARD_FORMAT:
        return None
    if state.get("checksum") != payload_checksum(state):
        return None
    if run is not None and json.dumps(state.get("run"), sort_keys=True) != json.dumps(run, sort_keys=True):
        return None
    return state


def write_index(out: str | os.PathLike, shards: list[dict[str, Any]], run: dict[str, Any], n: int) -> Path:
    """Write ``OUT/samples.index.json`` (atomically): the run, ``n`` and the shards (``file``, ``start``,
    ``stop``, ``checksum``) in index order. Rank 0 writes it after every shard is complete."""
    out = Path(out)
    shards = sorted(shards, key=lambda s: s["start"])
    covered = 0
    for s in shards:
        if s["start"] != covered:
            raise ValueError(f"shards do not cover [0, {n}) contiguously at index {covered}")
        covered = s["stop"]
    if covered != n:
        raise ValueError(f"shards cover [0, {covered}), not [0, {n})")
    index = {"format": SHARD_FORMAT, "n": int(n), "world_size": len(shards), "run": run, "shards": shards}
    tmp = out / (INDEX_NAME + ".tmp")
    tmp.write_text(json.dumps(index, indent=2))
    os.replace(tmp, out / INDEX_NAME)
    return out / INDEX_NAME


def load_samples(out: str | os.PathLike) -> torch.Tensor:
    """The samples of a sharded run, in global index order, read through ``OUT/samples.index.json`` (each shard's
    checksum verified)."""
    out = Path(out)
    index = json.loads((out / INDEX_NAME).read_text())
    parts = []
    for s in index["shards"]:
        state = read_shard(out / s["file"])
        if state is None or state["start"] != s["start"] or state["stop"] != s["stop"]:
            raise ValueError(f"shard {s['file']} of {out} is missing, incomplete or corrupted")
        if state["checksum"] != s["checksum"]:
            raise ValueError(f"shard {s['file']} of {out} is not the one its index lists (checksum)")
        parts.append(state["x"])
    return torch.cat(parts) if parts else torch.empty(0)


# ---------------------------------------------------------------------------------------------------------------------
# studies
# ---------------------------------------------------------------------------------------------------------------------


def merge_study_results(parts: list):
    """Join the [`StudyResult`][sde_diffusion.studies.results.StudyResult]s of disjoint solver sets (rank order =
    solver order; ``None`` for a rank without solvers) into one, as a single process running all the solvers
    would have built it: solvers, runs, chains, fits and samples concatenated in order; the shared fields (problem,
    references, start states' round-off, distributional floor) are those of the first part, the references of a
    kind (``ode``/``sde``) from the first part that computed one."""
    parts = [p for p in parts if p is not None]
    if not parts:
        raise ValueError("no study results to merge")
    merged = parts[0]
    reference = dict(merged.reference or {})
    for p in parts[1:]:
        merged.solvers.update(p.solvers)
        merged.runs.extend(p.runs)
        merged.chains.update(p.chains)
        merged.fits.update(p.fits)
        merged.samples.update(p.samples)
        for kind, info in (p.reference or {}).items():
            if reference.get(kind) is None:
                reference[kind] = info
    merged.reference = reference
    return merged


# ---------------------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------------------


class DataParallelRows(nn.Module):
    """``net`` (e.g. a ``DistributedDataParallel`` module) evaluated on the rows ``rows`` of a global batch only.

    The other rows of the output are zeros that carry no gradient; the training loop keeps only this rank's rows
    of the per-sample loss. Every rank draws the whole batch's data, times and noise from the same generator, so
    the ranks' rows together are exactly the single-process batch and the averaged gradient is the single-process
    gradient (up to the order of the sums).
    """

    def __init__(self, net: nn.Module, rows: slice):
        super().__init__()
        self.net, self.rows = net, rows

    def forward(self, x: torch.Tensor, t: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        sl = self.rows
        t_rows = t[sl] if torch.is_tensor(t) and t.ndim > 0 and t.shape[0] == x.shape[0] else t
        y = self.net(x[sl], t_rows, *args, **kwargs)
        before = y.new_zeros((sl.start, *y.shape[1:]))
        after = y.new_zeros((x.shape[0] - sl.stop, *y.shape[1:]))
        return torch.cat([before, y, after])


class TrainingShard(_RankOfJob):
    """What [`train`][sde_diffusion.training.train.train] needs to run data-parallel in an initialised process group
    of ``W > 1`` ranks (from [`training_shard`][sde_diffusion.distributed.training_shard]).

    ``net`` is wrapped in ``DistributedDataParallel``; this rank owns the rows ``rows`` of every global batch of
    ``batch_size`` (balanced blocks). Every rank draws the whole batch (data, times, noise) from the same generator,
    so the loss of rank ``r`` is ``(W / B) sum_{i in rows_r} l_i`` and DDP's average of the gradients is exactly the
    gradient of the single-process mean ``(1/B) sum_i l_i`` (up to the order of the floating-point sums). Nothing
    in the training state depends on ``W``: a checkpoint resumes under another world size.
    """

    def __init__(self, net: nn.Module, batch_size: int, device: str | torch.device):
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        if batch_size < self.world_size:
            raise ValueError(f"batch_size {batch_size} is smaller than the number of ranks {self.world_size}")
        rows = block_range(batch_size, self.rank, self.world_size)
        self.rows, self.batch_size = slice(rows.start, rows.stop), int(batch_size)
        self.device = torch.device(device)
        ids = None
        if self.device.type == "cuda":
            ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()]
        self.ddp = DistributedDataParallel(net, device_ids=ids)
        self.rows_net = DataParallelRows(self.ddp, self.rows)

    def loss(self, per_sample):
        """This rank's loss ``(W / B) sum_{i in rows} l_i`` from ``per_sample(model, x0, generator) -> (B,)``."""
        scale = self.world_size / self.batch_size

        def loss(model, x0, generator=None):
            return per_sample(model, x0, generator)[self.rows].sum() * scale

        return loss

    def average(self, values: torch.Tensor) -> torch.Tensor:
        """The mean over the ranks of ``values`` (the logged losses: the global batch means)."""
        import torch.distributed as dist

        total = values.detach().clone()
        dist.all_reduce(total)
        return total / self.world_size

    def agreed(self, stop) -> AgreedStop:
        """``stop`` (a [`StopOnSignals`][sde_diffusion.training.train.StopOnSignals]) as the ranks agree on it."""
        return AgreedStop(stop, self.device)


class AgreedStop:
    """A stop request that every rank sees at the same step: ``poll()`` (once per step, on every rank) takes the
    largest signal number any rank received; ``signum`` is the value agreed at the last poll."""

    def __init__(self, local, device: torch.device):
        self.local, self.device = local, device
        self.signum: int | None = None

    def poll(self) -> int | None:
        import torch.distributed as dist

        flag = torch.tensor([self.local.signum or 0], dtype=torch.int64, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.signum = int(flag.item()) or None
        return self.signum


def training_shard(net: nn.Module, batch_size: int, device: str | torch.device) -> TrainingShard | None:
    """A [`TrainingShard`][sde_diffusion.distributed.TrainingShard] when a process group of more than one rank is
    initialised (e.g. by ``sde-diffusion train`` under ``torchrun``), else ``None`` (one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return None
    return TrainingShard(net, batch_size, device)
