"""Scale-out (issue 12): the pieces of `sde_diffusion.distributed` in one process, and 2-rank gloo jobs on CPU under
torchrun (sample, study and DDP training against one process; a failing, a killed and a hung rank)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sde_diffusion.distributed import (
    INDEX_NAME,
    DataParallelRows,
    Job,
    block_range,
    load_samples,
    merge_study_results,
    read_shard,
    sample_seed,
    shard_items,
    shard_path,
    write_index,
    write_shard,
)

ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "SDE_DIFFUSION_DIST_TIMEOUT": "60",
    "SDE_DIFFUSION_DIST_HEARTBEAT": "4",
    "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
ONE = [sys.executable, "-m", "sde_diffusion.cli"]
SAMPLE = [
    "sample",
    "--problem",
    "ring",
    "--solver",
    "heun",
    "--steps",
    "4",
    "--num-samples",
    "150",
    "--batch-size",
    "32",
]


def torchrun(*args, cwd, timeout=120, rank0_only=True):
    filt = ["--local-ranks-filter", "0"] if rank0_only else []
    return subprocess.run(
        [*TORCHRUN, *filt, "-m", "sde_diffusion.cli", *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_process(*args, cwd, timeout=120):
    return subprocess.run([*ONE, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------------------------------
# one process
# ---------------------------------------------------------------------------------------------------------------------


def test_sample_seed_is_a_function_of_seed_and_index():
    seeds = [sample_seed(3, i) for i in range(1000)]
    assert seeds == [sample_seed(3, i) for i in range(1000)]
    assert len(set(seeds)) == 1000 and all(0 <= s < 2**63 for s in seeds)
    assert sample_seed(3, 5) != sample_seed(4, 5) and sample_seed(3, 5) != sample_seed(3, 5, stream="noise")


@pytest.mark.parametrize("n, world", [(10, 3), (3, 5), (8, 2), (0, 2)])
def test_block_range_partitions_in_order(n, world):
    parts = [block_range(n, r, world) for r in range(world)]
    assert [i for p in parts for i in p] == list(range(n))
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
    assert [x for r in range(world) for x in shard_items(list("abcdefghij")[:n], r, world)] == list("abcdefghij")[:n]


def test_job_in_one_process_is_rank_0_of_1(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with Job("cpu") as job:
        assert (job.rank, job.world_size, job.distributed, job.device) == (0, 1, False, "cpu")
        assert job.gather(5) == [5] and job.all_gather("a") == ["a"]


def test_shards_index_and_resume_checks(tmp_path):
    run = {"seed": 0, "n": 7}
    x = torch.arange(14, dtype=torch.float64).reshape(7, 2)
    sums = [write_shard(shard_path(tmp_path, r, 2), x[lo:hi], lo, run) for r, (lo, hi) in enumerate([(0, 4), (4, 7)])]
    assert read_shard(shard_path(tmp_path, 0, 2), run)["stop"] == 4
    assert read_shard(shard_path(tmp_path, 0, 2), {"seed": 1, "n": 7}) is None  # another run: not resumed
    entries = [
        {"file": shard_path(tmp_path, r, 2).name, "start": lo, "stop": hi, "checksum": c}
        for r, ((lo, hi), c) in enumerate(zip([(0, 4), (4, 7)], sums))
    ]
    with pytest.raises(ValueError, match="cover"):
        write_index(tmp_path, entries[:1], run, 7)
    assert not (tmp_path / INDEX_NAME).exists()
    write_index(tmp_path, entries[::-1], run, 7)
    assert torch.equal(load_samples(tmp_path), x)
    # a changed value in a shard: not complete (a rerun recomputes it), and the index refuses it
    path = shard_path(tmp_path, 1, 2)
    state = torch.load(path, weights_only=True)
    state["x"][1, 0] += 1e-12  # a changed sample, the checksum left as it was
    torch.save(state, path)
    assert read_shard(path) is None
    with pytest.raises(ValueError, match="corrupted"):
        load_samples(tmp_path)


def test_study_parts_merge_into_the_single_process_study():
    """Cells of a solver computed alone (as on one rank) give the single-process study field for field."""
    from sde_diffusion.studies.convergence import convergence_study

    specs = ["ddim", "heun", "dpm_solver++:order=2"]
    kw = dict(n=32, schedule="vp-linear", reference="exact", progress=False)
    whole = convergence_study("gauss2d", specs, [4, 8], **kw).to_dict()
    parts = [convergence_study("gauss2d", shard_items(specs, r, 2), [4, 8], **kw) for r in range(2)]
    merged = merge_study_results([parts[0], None, parts[1]]).to_dict()
    for d in (whole, merged):
        for run in d["runs"]:
            run.pop("wall_time")
    assert merged == whole


def test_rows_of_a_global_batch_give_the_full_batch_gradient():
    """DataParallelRows + the (W/B) sum over a rank's rows: the ranks' gradients average to the full-batch one."""
    from sde_diffusion.models import Model
    from sde_diffusion.schedules import VPLinear
    from sde_diffusion.training.losses import get_loss
    from sde_diffusion.training.nets import MLPScoreNet

    torch.manual_seed(0)
    net = MLPScoreNet(dim=2).double()
    x0 = torch.randn(10, 2, dtype=torch.float64)
    full = get_loss("simple")(Model(net, VPLinear(), "eps"), x0, torch.Generator().manual_seed(1))
    want = torch.autograd.grad(full, list(net.parameters()))
    per_sample = get_loss("simple", reduction="none")
    grads = []
    for r in range(2):
        rows = block_range(10, r, 2)
        model = Model(DataParallelRows(net, slice(rows.start, rows.stop)), VPLinear(), "eps")
        loss = per_sample(model, x0, torch.Generator().manual_seed(1))[rows.start : rows.stop].sum() * 2 / 10
        grads.append(torch.autograd.grad(loss, list(net.parameters())))
    for w, a, b in zip(want, *grads):
        torch.testing.assert_close((a + b) / 2, w, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------------------------------
# 2-rank gloo jobs under torchrun
# ---------------------------------------------------------------------------------------------------------------------


def test_sample_two_ranks_equals_one_process(tmp_path):
    one = one_process(*SAMPLE, "--out", "one", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    two = torchrun(*SAMPLE, "--out", "two", cwd=tmp_path)
    assert two.returncode == 0, two.stderr
    assert "2 ranks" in two.stdout
    index = json.loads((tmp_path / "two" / INDEX_NAME).read_text())
    assert [s["file"] for s in index["shards"]] == [shard_path("", r, 2).name for r in range(2)]
    assert torch.equal(load_samples(tmp_path / "two"), torch.load(tmp_path / "one" / "samples.pt")["x"])
    assert (tmp_path / "two" / "samples.png").is_file()


@pytest.mark.slow
def test_sample_resumes_complete_shards(tmp_path):
    """A crashed run (no index; one shard missing) resumes the complete shard and recomputes the other; an index
    that exists means the run is complete and is never overwritten."""
    assert torchrun(*SAMPLE, "--out", "two", cwd=tmp_path).returncode == 0
    out = tmp_path / "two"
    x = load_samples(out)
    (out / INDEX_NAME).unlink()
    shard_path(out, 1, 2).unlink()
    again = torchrun(*SAMPLE, "--out", "two", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "resumed the shards of ranks [0]" in again.stdout
    assert torch.equal(load_samples(out), x)
    refused = torchrun(*SAMPLE, "--out", "two", cwd=tmp_path)
    assert refused.returncode != 0 and INDEX_NAME in refused.stderr


@pytest.mark.slow
def test_study_two_ranks_writes_the_single_process_json_and_png(tmp_path):
    args = [
        "study", "--quick", "--no-refine", "--problem", "gauss2d", "--order-problem", "none", "--solvers", "ddim",
        "heun", "dpm_solver++:order=2", "--nfe", "5", "10", "--num-samples", "64", "--no-progress",
    ]  # fmt: skip
    one = one_process(*args, "--out", "one", cwd=tmp_path)
    two = torchrun(*args, "--out", "two", cwd=tmp_path)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    a, b = (json.loads((tmp_path / d / "study.json").read_text()) for d in ("one", "two"))
    assert (a["world_size"], b["world_size"]) == (1, 2)
    for d in (a, b):
        for key in ("world_size", "created", "elapsed_s", "command"):
            d.pop(key)
        for run in d["studies"]["main"]["runs"]:
            run.pop("wall_time")
    assert a == b
    assert (tmp_path / "one" / "study.png").read_bytes() == (tmp_path / "two" / "study.png").read_bytes()


TRAIN = ["train", "--data", "ring", "--batch-size", "64", "--checkpoint-every", "0", "--no-progress"]


def _max_difference(a, b):
    from sde_diffusion.training.train import load_checkpoint

    a, b = load_checkpoint(a), load_checkpoint(b)
    assert a["step"] == b["step"]
    return max(float((a[k][n] - b[k][n]).abs().max()) for k in ("net", "ema") for n in a[k])


@pytest.mark.slow
def test_ddp_training_equals_one_process_and_resumes_with_another_world_size(tmp_path):
    one = one_process(*TRAIN, "--steps", "20", "--out", "one", cwd=tmp_path)
    two = torchrun(*TRAIN, "--steps", "20", "--out", "two", cwd=tmp_path)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert _max_difference(tmp_path / "one" / "ckpt.pt", tmp_path / "two" / "ckpt.pt") < 1e-6
    # 10 steps on two ranks, then 10 more in one process: the 20-step run
    half = torchrun(*TRAIN, "--steps", "10", "--out", "mixed", cwd=tmp_path)
    assert half.returncode == 0, half.stderr
    rest = one_process(*TRAIN, "--steps", "20", "--out", "mixed", cwd=tmp_path)
    assert rest.returncode == 0, rest.stderr
    assert _max_difference(tmp_path / "one" / "ckpt.pt", tmp_path / "mixed" / "ckpt.pt") < 1e-6


@pytest.mark.slow
def test_a_failing_rank_stops_the_job_with_its_error_on_rank_0(tmp_path):
    """Rank 1 cannot write its shard (a folder is in the way): non-zero exit, rank 1's error on rank 0's stderr
    (only rank 0's output is shown), no index."""
    (tmp_path / "two" / shard_path("", 1, 2).name).mkdir(parents=True)
    t0 = time.monotonic()
    r = torchrun(*SAMPLE, "--out", "two", cwd=tmp_path, timeout=90)
    assert r.returncode != 0
    assert "rank 1 of 2 failed" in r.stderr and "IsADirectoryError" in r.stderr
    assert not (tmp_path / "two" / INDEX_NAME).exists()
    assert time.monotonic() - t0 < 60


def _worker_pids(agent: int) -> list[int]:
    """The worker processes under a torchrun agent (any depth), with their LOCAL_RANK."""
    found, todo = {}, [agent]
    while todo:
        pid = todo.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        for c in map(int, children):
            todo.append(c)
            try:
                env = Path(f"/proc/{c}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for item in env:
                if item.startswith(b"LOCAL_RANK="):
                    found[int(item.split(b"=")[1])] = c
    return found


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
def test_a_killed_or_hung_rank_fails_the_job_in_bounded_time(tmp_path, sig):
    """SIGKILL (torchrun sees it) or SIGSTOP (nobody but rank 0's watchdog sees it: no heartbeat) on rank 1 in the
    middle of a long sampling job: a non-zero exit naming rank 1 within a bounded time, and no index."""
    long = ["sample", "--problem", "ring", "--solver", "heun", "--steps", "200", "--num-samples", "40000"]
    proc = subprocess.Popen(
        [*TORCHRUN, "-m", "sde_diffusion.cli", *long, "--out", "two"],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len(workers := _worker_pids(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(workers) == 2, "torchrun did not start two workers"
        time.sleep(4.0)  # inside the sampling loop
        t0 = time.monotonic()
        os.kill(workers[1], sig)
        _, err = proc.communicate(timeout=90)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _worker_pids(proc.pid).values():
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode != 0
    if sig == signal.SIGSTOP:
        assert "rank 1 of 2 stopped answering" in err
    else:
        assert "SIGKILL" in err and "local_rank: 1" in err
    assert not (tmp_path / "two" / INDEX_NAME).exists()
    # SIGKILL: torchrun's monitor, seconds; SIGSTOP: rank 0's report after the 4 s heartbeat, then torchrun ends the
    # stopped rank after its 30 s grace
    assert elapsed < 60, elapsed


@pytest.mark.slow
def test_ctrl_c_stops_every_rank_at_one_step_and_rank_0_writes_the_checkpoint(tmp_path):
    """SIGINT to the whole job (a terminal's Ctrl-C): the ranks agree on the step, rank 0 writes the checkpoint and
    says how to resume; the checkpoint then resumes in one process."""
    proc = subprocess.Popen(
        [
            *TORCHRUN,
            "--local-ranks-filter",
            "0",
            "-m",
            "sde_diffusion.cli",
            *TRAIN,
            "--steps",
            "100000",
            "--out",
            "r",
            "--checkpoint-every",
            "50",
        ],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "r" / "ckpt.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.2)  # training: the first periodic checkpoint is written
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    from sde_diffusion.training.train import load_checkpoint

    assert proc.returncode != 0 and "interrupted by SIGINT after step" in err, err
    step = load_checkpoint(tmp_path / "r" / "ckpt.pt")["step"]
    assert f"after step {step};" in err
    more = one_process(*TRAIN, "--steps", str(step + 5), "--out", "r", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    assert load_checkpoint(tmp_path / "r" / "ckpt.pt")["step"] == step + 5
