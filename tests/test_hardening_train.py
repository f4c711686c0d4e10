"""Training checkpoints under abuse (issue 15): SIGKILL at random moments never leaves an unloadable ``ckpt.pt`` and
resuming is bit-identical to the uninterrupted run; SIGINT/SIGTERM finish the step, write the checkpoint and exit
130/143 with a one-line message; corrupted, empty or foreign checkpoints and resumes with other settings are refused
with the file and the setting named, the checkpoint untouched; temporaries of a killed save are removed.

The interrupted runs are forked from the test process (torch is already imported, so a try costs milliseconds, not
an interpreter start) and killed with real signals.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

from sde_diffusion import VPLinear, cli
from sde_diffusion.training.nets import MLPScoreNet
from sde_diffusion.training.train import (
    RUN_SETTINGS,
    CheckpointError,
    CheckpointMismatch,
    TrainingInterrupted,
    load_checkpoint,
    payload_checksum,
    save_checkpoint,
    train,
)

KEYS = ("net", "ema", "optimizer", "rng", "losses", "step", "config")


def small_net(hidden: int = 32) -> MLPScoreNet:
    torch.manual_seed(0)
    return MLPScoreNet(dim=2, hidden=hidden, depth=2, embed_dim=16).float()


RUN = dict(steps=40, batch_size=32, lr=2e-3, ema_decay=0.9, log_every=4, checkpoint_every=2, progress=False)


def run_training(path: Path, **kw):
    return train(small_net(), VPLinear(), "ring", checkpoint=path, **{**RUN, **kw})


def same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


def fork(fn) -> int:
    """Run ``fn()`` in a forked child; its return value is the exit status (stdout/stderr go to ``fn``'s own
    redirections)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            code = int(fn() or 0)
        except BaseException:
            code = 98
        finally:
            os._exit(code)
    return pid


def wait(pid: int, timeout: float = 120.0) -> int:
    """Exit status (or ``-signal``) of a child, killing it if it outlives ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"child {pid} did not finish within {timeout} s")
        time.sleep(0.002)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("ref") / "ckpt.pt"
    run_training(path)
    return load_checkpoint(path)


def kill_and_resume(tmp_path: Path, reference: dict, tries: int, seed: int) -> list[int]:
    """``tries`` times: start the run in a fresh folder, SIGKILL it at a random moment, check that ckpt.pt (if any)
    loads, resume to the end and compare the final checkpoint with the uninterrupted run's, bit for bit. Returns
    the steps of the checkpoints the kills left."""
    rng = random.Random(seed)
    t0 = time.perf_counter()
    pid = fork(lambda: run_training(tmp_path / "timing" / "ckpt.pt") and 0)
    assert wait(pid) == 0
    duration = time.perf_counter() - t0  # one whole run, fork included
    killed_at = []
    for k in range(tries):
        path = tmp_path / f"try{k}" / "ckpt.pt"
        pid = fork(lambda path=path: run_training(path) and 0)
        time.sleep(rng.uniform(0.0, duration))
        os.kill(pid, signal.SIGKILL)
        assert wait(pid) in (0, -signal.SIGKILL)
        if path.exists():
            killed_at.append(int(load_checkpoint(path)["step"]))  # never torn: atomic replace, checksum verified
        final = run_training(path)  # removes a killed save's temporaries, resumes, finishes
        assert final.step == RUN["steps"]
        assert not list(path.parent.glob("ckpt.pt.*.tmp"))
        state = load_checkpoint(path)
        for key in KEYS:
            assert same(state[key], reference[key]), (k, key)
    return killed_at


def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path, reference):
    kill_and_resume(tmp_path, reference, tries=3, seed=0)


@pytest.mark.slow
def test_sigkill_many_times(tmp_path, reference):
    killed_at = kill_and_resume(tmp_path, reference, tries=30, seed=1)
    assert len(set(killed_at)) >= 5, killed_at  # the kills landed at many different points of the run


def _cli_child(argv: list[str], log: Path):
    def child():
        with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            return cli.main(argv)

    return child


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_and_sigterm_checkpoint_and_exit_130_143_then_resume_is_exact(tmp_path, signum, status):
    base = ["train", "--batch-size", "16", "--checkpoint-every", "5", "--no-progress"]
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    pid = fork(_cli_child([*base, "--steps", "100000", "--out", str(run_dir)], log))
    deadline = time.monotonic() + 60
    while not (run_dir / "ckpt.pt").exists():  # the run is in its loop once the first checkpoint is written
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.005)
    os.kill(pid, signum)
    assert wait(pid) == status, log.read_text()
    text = log.read_text()
    assert "Traceback" not in text and text.count("\n") == 1, text
    name = signal.Signals(signum).name
    assert f"interrupted by {name} after step" in text and "resume with: sde-diffusion train" in text
    step = load_checkpoint(run_dir / "ckpt.pt")["step"]
    assert f"after step {step};" in text
    # resuming (fewer total steps are allowed) equals the uninterrupted run of that many steps
    total = step + 3
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main([*base, "--steps", str(total), "--out", str(run_dir)]) == 0
        assert cli.main([*base, "--steps", str(total), "--out", str(tmp_path / "ref")]) == 0
    a, b = load_checkpoint(run_dir / "ckpt.pt"), load_checkpoint(tmp_path / "ref" / "ckpt.pt")
    for key in KEYS:
        if key != "config":  # the interrupted run recorded steps=100000
            assert same(a[key], b[key]), key


def test_interrupt_through_the_api_raises_training_interrupted(tmp_path):
    path = tmp_path / "c.pt"

    def child():
        try:
            run_training(path, steps=10**6)
        except TrainingInterrupted as e:
            ok = e.signum == signal.SIGINT and e.checkpoint == path and load_checkpoint(path)["step"] == e.step
            return 7 if ok else 8
        return 9

    pid = fork(child)
    deadline = time.monotonic() + 60
    while not path.exists():
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(pid, signal.SIGINT)
    assert wait(pid) == 7


# ---------------------------------------------------------------------------------------------------------------------
# integrity
# ---------------------------------------------------------------------------------------------------------------------


def flip_inside_weight(path: Path, nbytes: int = 64) -> None:
    """Invert ``nbytes`` bytes of the first EMA weight tensor's data inside the file."""
    state = torch.load(path, weights_only=True)
    raw = next(iter(state["ema"].values())).contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    data = bytearray(path.read_bytes())
    at = bytes(data).find(raw[:nbytes])
    assert at > 0
    for k in range(nbytes):
        data[at + k] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_bytes_truncation_and_garbage_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    run_training(path, steps=4)
    good = path.read_bytes()
    state = load_checkpoint(path)
    assert state["checksum"] == payload_checksum(state)
    flip_inside_weight(path)
    with pytest.raises(CheckpointError, match=f"{path}.*corrupted"):
        load_checkpoint(path)
    for bad in (b"", good[: len(good) // 2], os.urandom(2000), b"\x00" * 100):
        path.write_bytes(bad)
        with pytest.raises(CheckpointError, match=str(path)):
            load_checkpoint(path)
    # the training loop refuses to resume from it and leaves it as it is
    with pytest.raises(CheckpointError):
        run_training(path, steps=6)
    assert path.read_bytes() == b"\x00" * 100


def test_a_change_of_any_payload_value_is_detected(tmp_path):
    path = tmp_path / "c.pt"
    run_training(path, steps=2)
    state = torch.load(path, weights_only=True)
    for change in (
        lambda s: s["losses"].__setitem__(0, s["losses"][0] + 1e-12),
        lambda s: s.__setitem__("step", s["step"] + 1),
        lambda s: s["config"].__setitem__("lr", 1.0),
        lambda s: s["schedule"].__setitem__("beta_max", 19.0),
        lambda s: next(iter(s["net"].values())).view(-1)[0].add_(1.0),
    ):
        copy = torch.load(path, weights_only=True)
        change(copy)
        torch.save(copy, tmp_path / "x.pt")  # same stored checksum, changed payload
        with pytest.raises(CheckpointError, match="corrupted"):
            load_checkpoint(tmp_path / "x.pt")
    assert payload_checksum(state) == state["checksum"]


def test_leftover_temporaries_of_a_killed_save_are_removed(tmp_path):
    path = tmp_path / "ckpt.pt"
    for name in ("ckpt.pt.abc123.tmp", "ckpt.pt.x.tmp"):
        (tmp_path / name).write_bytes(b"partial")
    (tmp_path / "other.tmp").write_bytes(b"not ours")
    run_training(path, steps=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "other.tmp"]


def test_legacy_checkpoints_without_a_checksum_still_load_new_ones_need_it(tmp_path):
    torch.save({"format": "sde_diffusion.train/1", "w": torch.ones(2)}, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")["w"].tolist() == [1.0, 1.0]
    torch.save({"format": "sde_diffusion.train/2", "w": torch.ones(2)}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(tmp_path / "new.pt")


def test_save_checkpoint_adds_a_verifiable_checksum(tmp_path):
    path = save_checkpoint({"format": "sde_diffusion.train/2", "w": torch.arange(3.0)}, tmp_path / "c.pt")
    assert load_checkpoint(path)["w"].tolist() == [0.0, 1.0, 2.0]


# ---------------------------------------------------------------------------------------------------------------------
# resume settings
# ---------------------------------------------------------------------------------------------------------------------

MISMATCHES = {
    "schedule": dict(schedule=VPLinear(beta_max=15.0)),
    "data": dict(data="moons"),
    "data_options": dict(data_options={"radius": 1.5}),
    "data_shape": dict(data=lambda n, g: torch.randn(n, 3, generator=g)),
    "prediction": dict(prediction="x0"),
    "time_input": dict(time_input="logsnr"),
    "loss": dict(loss="dsm"),
    "loss_options": dict(loss_options={"time_sampling": "logsnr"}),
    "lr": dict(lr=1e-3),
    "batch_size": dict(batch_size=16),
    "seed": dict(seed=1),
    "ema_decay": dict(ema_decay=0.5),
    "net_config": dict(net=small_net(hidden=16)),
}


@pytest.mark.parametrize("setting", sorted(MISMATCHES))
def test_resume_with_another_setting_is_refused_naming_it_and_leaves_the_checkpoint(tmp_path, setting):
    path = tmp_path / "ckpt.pt"
    run_training(path, steps=2)
    before = path.read_bytes()
    kw = dict(MISMATCHES[setting])
    net, schedule, data = kw.pop("net", small_net()), kw.pop("schedule", VPLinear()), kw.pop("data", "ring")
    with pytest.raises(CheckpointMismatch, match=rf"cannot resume from {path}.*\b{setting} \(checkpoint"):
        train(net, schedule, data, checkpoint=path, **{**RUN, "steps": 4, **kw})
    assert path.read_bytes() == before
    assert setting in RUN_SETTINGS or setting in ("data_shape",)


def test_steps_and_checkpoint_interval_may_change_on_resume(tmp_path):
    path = tmp_path / "ckpt.pt"
    run_training(path, steps=4)
    res = run_training(path, steps=6, checkpoint_every=3, log_every=1)
    assert res.step == 6


def test_train_rejects_unknown_options_and_bad_stop_at():
    with pytest.raises(TypeError, match="unknown options.*'lrr'"):
        train(small_net(), VPLinear(), "ring", lrr=1e-3)
    with pytest.raises(ValueError, match="stop_at"):
        train(small_net(), VPLinear(), "ring", stop_at=-1)
