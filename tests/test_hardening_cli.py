"""Every ``sde-diffusion`` command x a bad argument (issue 15): exit status 2, exactly one line on stderr naming the
problem, no traceback, and nothing written -- the folder the command runs in is byte-for-byte unchanged.

The table runs in-process through ``cli.main`` (the code path of the console script, without an interpreter start per
case); argparse's errors arrive as ``SystemExit(2)``. A few cases run as real subprocesses too.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch
from test_cli import _run as run_cli_process  # the console path in a fresh interpreter

from sde_diffusion import cli

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--steps", "3", "--batch-size", "8", "--checkpoint-every", "0", "--no-progress"]
STUDY = ["study", "--quick", "--solvers", "ddim", "--order-problem", "none", "--nfe", "4"]
GRID = ["optimise-grid", "--quick", "--nfe", "4"]


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> bytes:
    """A real (tiny) training checkpoint, made once."""
    d = tmp_path_factory.mktemp("ckpt")
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main([*TRAIN, "--out", str(d / "run")]) == 0
    return (d / "run" / "ckpt.pt").read_bytes()


def flipped(data: bytes) -> bytes:
    """The checkpoint with 64 bytes inverted inside its first EMA weight tensor."""
    state = torch.load(io.BytesIO(data), weights_only=True)
    raw = next(iter(state["ema"].values())).contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    at = data.find(raw[:64])
    assert at > 0
    return data[:at] + bytes(b ^ 0xFF for b in data[at : at + 64]) + data[at + 64 :]


# what the folder holds before the command: name -> bytes (None: a folder); "CKPT" / "FLIPPED": the checkpoint
SETUPS = {
    "file": {"f": b"x"},
    "ckpt": {"d": None, "d/ckpt.pt": "CKPT"},
    "empty": {"d": None, "d/ckpt.pt": b""},
    "garbage": {"d": None, "d/ckpt.pt": bytes(range(256)) * 4},
    "flipped": {"d": None, "d/ckpt.pt": "FLIPPED"},
    "dir": {"o": None},
    "study": {"o": None, "o/study.json": b"{}"},
    "samples": {"o": None, "o/samples.pt": b"x"},
}

# (id, setup, argv, words the one-line message must contain)
CASES = [
    # train
    ("train --lr inf", None, [*TRAIN, "--lr", "inf", "--out", "o"], ["--lr"]),
    ("train --lr nan", None, [*TRAIN, "--lr", "nan", "--out", "o"], ["--lr"]),
    ("train --lr 0", None, [*TRAIN, "--lr", "0", "--out", "o"], ["--lr"]),
    ("train --checkpoint-every -1", None, [*TRAIN, "--checkpoint-every", "-1", "--out", "o"], ["--checkpoint-every"]),
    ("train --seed -1", None, [*TRAIN, "--seed", "-1", "--out", "o"], ["--seed"]),
    ("train --steps 0", None, [*TRAIN, "--steps", "0", "--out", "o"], ["--steps"]),
    ("train --batch-size 0", None, [*TRAIN, "--batch-size", "0", "--out", "o"], ["--batch-size"]),
    ("train --threads 0", None, [*TRAIN, "--threads", "0", "--out", "o"], ["--threads"]),
    ("train --data nope", None, [*TRAIN, "--data", "nope", "--out", "o"], ["valid data sets"]),
    ("train --schedule nope", None, [*TRAIN, "--schedule", "nope", "--out", "o"], ["valid schedules"]),
    ("train --prediction nope", None, [*TRAIN, "--prediction", "nope", "--out", "o"], ["--prediction"]),
    ("train --out FILE", "file", [*TRAIN, "--out", "f"], ["--out", "existing file"]),
    ("train --out FILE/sub", "file", [*TRAIN, "--out", "f/sub"], ["--out", "is a file"]),
    ("train resume --lr", "ckpt", [*TRAIN, "--out", "d", "--lr", "1e-3"], ["cannot resume", "lr (checkpoint"]),
    ("train resume --prediction", "ckpt", [*TRAIN, "--out", "d", "--prediction", "x0"], ["prediction (checkpoint"]),
    ("train resume --batch-size", "ckpt", [*TRAIN, "--out", "d", "--batch-size", "4"], ["batch_size (checkpoint"]),
    ("train resume --seed", "ckpt", [*TRAIN, "--out", "d", "--seed", "3"], ["seed (checkpoint"]),
    ("train resume --schedule", "ckpt", [*TRAIN, "--out", "d", "--schedule", "edm"], ["schedule (checkpoint"]),
    ("train resume --data", "ckpt", [*TRAIN, "--out", "d", "--data", "moons"], ["data (checkpoint 'ring'"]),
    ("train resume other data shape", "ckpt", [*TRAIN, "--out", "d", "--data", "digits"], ["data_shape (checkpoint"]),
    ("train resume empty ckpt.pt", "empty", [*TRAIN, "--out", "d"], ["ckpt.pt", "empty"]),
    ("train resume garbage ckpt.pt", "garbage", [*TRAIN, "--out", "d"], ["ckpt.pt", "not a readable checkpoint"]),
    ("train resume flipped ckpt.pt", "flipped", [*TRAIN, "--out", "d"], ["ckpt.pt", "corrupted"]),
    # sample
    ("sample --n 1", None, ["sample", "--n", "1", "--out", "o"], ["--n"]),
    ("sample --n 0", None, ["sample", "--n", "0", "--out", "o"], ["--n"]),
    ("sample --nfe 0", None, ["sample", "--nfe", "0", "--out", "o"], ["--nfe"]),
    ("sample --steps 0", None, ["sample", "--steps", "0", "--out", "o"], ["--steps"]),
    ("sample --nfe and --steps", None, ["sample", "--nfe", "4", "--steps", "4", "--out", "o"], ["--steps"]),
    ("sample --seed -1", None, ["sample", "--seed", "-1", "--out", "o"], ["--seed"]),
    ("sample --threads -1", None, ["sample", "--threads", "-1", "--out", "o"], ["--threads"]),
    ("sample --device nosuch", None, ["sample", "--device", "nosuch", "--out", "o"], ["device"]),
    ("sample --dtype float16", None, ["sample", "--dtype", "float16", "--out", "o"], ["--dtype"]),
    ("sample --solver nosuch", None, ["sample", "--solver", "nosuch", "--out", "o"], ["valid solvers"]),
    ("sample --solver ddim:eta=-1", None, ["sample", "--solver", "ddim:eta=-1", "--out", "o"], ["eta"]),
    ("sample --solver ddim_inverse", None, ["sample", "--solver", "ddim_inverse", "--out", "o"], ["forward"]),
    (
        "sample adaptive --nfe",
        None,
        ["sample", "--solver", "adaptive_multistep", "--nfe", "2", "--out", "o"],
        ["own steps"],
    ),
    ("sample restart --nfe 2", None, ["sample", "--solver", "restart", "--nfe", "2", "--out", "o"], ["too small"]),
    ("sample --problem nope", None, ["sample", "--problem", "nope", "--out", "o"], ["valid problems"]),
    ("sample --grid nope", None, ["sample", "--grid", "nope", "--out", "o"], ["valid grids"]),
    ("sample --out FILE", "file", ["sample", "--n", "8", "--out", "f"], ["--out", "existing file"]),
    ("sample --out FILE/sub", "file", ["sample", "--n", "8", "--out", "f/sub"], ["--out", "is a file"]),
    ("sample --out DIR with samples", "samples", ["sample", "--n", "8", "--out", "o"], ["samples.pt", "overwritten"]),
    ("sample --n too large", None, ["sample", "--problem", "gmm64", "--n", str(10**13), "--out", "o"], ["needs", "TB"]),
    ("sample --checkpoint missing", None, ["sample", "--checkpoint", "nope.pt", "--out", "o"], ["no such file"]),
    ("sample --checkpoint DIR", "dir", ["sample", "--checkpoint", "o", "--out", "s"], ["not a file"]),
    ("sample --checkpoint empty", "empty", ["sample", "--checkpoint", "d/ckpt.pt", "--out", "o"], ["empty"]),
    ("sample --checkpoint garbage", "garbage", ["sample", "--checkpoint", "d/ckpt.pt", "--out", "o"], ["readable"]),
    ("sample --checkpoint flipped", "flipped", ["sample", "--checkpoint", "d/ckpt.pt", "--out", "o"], ["corrupted"]),
    # study
    ("study --out FILE", "file", [*STUDY, "--out", "f"], ["--out", "existing file"]),
    ("study --out FILE/sub", "file", [*STUDY, "--out", "f/sub"], ["--out", "is a file"]),
    ("study --out DIR with study.json", "study", [*STUDY, "--out", "o"], ["study.json", "overwritten"]),
    ("study --n 1", None, [*STUDY, "--n", "1", "--out", "o"], ["--n"]),
    ("study --rtol 0", None, [*STUDY, "--rtol", "0", "--out", "o"], ["--rtol"]),
    ("study --repeats 0", None, [*STUDY, "--repeats", "0", "--out", "o"], ["--repeats"]),
    ("study --max-nfe 0", None, [*STUDY, "--max-nfe", "0", "--out", "o"], ["--max-nfe"]),
    ("study --nfe 0", None, [*STUDY[:-2], "--nfe", "0", "--out", "o"], ["--nfe"]),
    ("study --seed -1", None, [*STUDY, "--seed", "-1", "--out", "o"], ["--seed"]),
    ("study --solvers nosuch", None, ["study", "--quick", "--solvers", "nosuch", "--out", "o"], ["valid solvers"]),
    ("study --solvers ddim_inverse", None, [*STUDY[:3], "ddim_inverse", *STUDY[4:], "--out", "o"], ["forward"]),
    ("study --solvers adaptive", None, [*STUDY[:3], "dpm_solver_adaptive", *STUDY[4:], "--out", "o"], ["adaptive"]),
    ("study --reference magic", None, [*STUDY, "--reference", "magic", "--out", "o"], ["valid references"]),
    ("study --order-problem x", None, ["study", "--quick", "--order-problem", "x", "--out", "o"], ["valid problems"]),
    # optimise-grid
    ("optimise-grid --out DIR", "dir", [*GRID, "--out", "o"], ["--out", "existing folder"]),
    ("optimise-grid --out FILE", "file", [*GRID, "--out", "f"], ["--out", "already exists"]),
    ("optimise-grid --out FILE/x.json", "file", [*GRID, "--out", "f/x.json"], ["--out", "is a file"]),
    ("optimise-grid --solver ddim_inverse", None, [*GRID, "--solver", "ddim_inverse", "--out", "g.json"], ["forward"]),
    (
        "optimise-grid --solver adaptive",
        None,
        [*GRID, "--solver", "adaptive_multistep", "--out", "g.json"],
        ["adaptive"],
    ),
    ("optimise-grid --solver ddpm", None, [*GRID, "--solver", "ddpm", "--out", "g.json"], ["deterministic"]),
    ("optimise-grid --nfe 0", None, ["optimise-grid", "--quick", "--nfe", "0", "--out", "g.json"], ["--nfe"]),
    ("optimise-grid --pilot 0", None, [*GRID, "--pilot", "0", "--out", "g.json"], ["--pilot"]),
    ("optimise-grid --problem moons", None, [*GRID, "--problem", "moons", "--out", "g.json"], ["valid problems"]),
    # calibrate
    ("calibrate --checkpoint missing", None, ["calibrate", "--checkpoint", "nope.pt"], ["no such file"]),
    ("calibrate --checkpoint garbage", "garbage", ["calibrate", "--checkpoint", "d/ckpt.pt"], ["readable"]),
    ("calibrate --checkpoint flipped", "flipped", ["calibrate", "--checkpoint", "d/ckpt.pt"], ["corrupted"]),
    ("calibrate --nfe 0", "ckpt", ["calibrate", "--checkpoint", "d/ckpt.pt", "--nfe", "0"], ["--nfe"]),
    ("calibrate --solvers nosuch", "ckpt", ["calibrate", "--checkpoint", "d/ckpt.pt", "--solvers", "x"], ["valid"]),
    # schedules, solvers, the top level
    ("schedules --dtype float16", None, ["schedules", "--dtype", "float16"], ["--dtype"]),
    ("solvers --bogus", None, ["solvers", "--bogus"], ["--bogus"]),
    ("no such command", None, ["nosuch"], ["invalid choice"]),
]


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def prepare(root: Path, setup: str | None, checkpoint: bytes) -> None:
    for name, content in SETUPS.get(setup, {}).items():
        path = root / name
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.write_bytes(
                checkpoint if content == "CKPT" else flipped(checkpoint) if content == "FLIPPED" else content
            )


def run_in_process(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as e:  # argparse
            code = e.code
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("case, setup, argv, words", CASES, ids=[c[0] for c in CASES])
def test_bad_argument_is_one_line_exit_2_and_writes_nothing(
    case, setup, argv, words, tmp_path, monkeypatch, checkpoint_bytes
):
    monkeypatch.chdir(tmp_path)
    prepare(tmp_path, setup, checkpoint_bytes)
    before = snapshot(tmp_path)
    code, out, err = run_in_process(argv)
    assert code == 2, (code, out, err)
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith("sde-diffusion") and "error:" in err and "Traceback" not in err
    for word in words:
        assert word in err, (word, err)
    assert snapshot(tmp_path) == before  # nothing created, nothing changed (the checkpoint untouched)


def test_every_command_appears_in_the_table():
    commands = {argv[0] for _, _, argv, _ in CASES}
    assert set(cli.COMMANDS) <= commands


@pytest.mark.slow  # two interpreter starts; the in-process table above runs the same code
def test_as_real_processes_no_traceback(tmp_path, checkpoint_bytes):
    """The console path end to end: a resume mismatch and a corrupted checkpoint in one interpreter each."""
    prepare(tmp_path, "flipped", checkpoint_bytes)
    before = snapshot(tmp_path)
    for argv in ([*TRAIN, "--out", "d"], ["sample", "--checkpoint", "d/ckpt.pt", "--out", "o"]):
        r = run_cli_process(*argv, cwd=tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert "corrupted" in r.stderr
    assert snapshot(tmp_path) == before


def test_sample_in_batches_equals_one_batch(tmp_path, monkeypatch):
    """--n larger than a batch: sample i starts from a state seeded by (seed, i), so batches of 16 give the one-batch
    samples (a batch is one call of the sampler: equal up to round-off); the first batch is the --n 16 run exactly."""
    from sde_diffusion.cli import sample as sample_cmd

    args = ["sample", "--problem", "gauss2d", "--solver", "heun", "--steps", "3"]
    code, _, err = run_in_process([*args, "--n", "40", "--out", str(tmp_path / "one")])
    assert code == 0, err
    monkeypatch.setattr(sample_cmd, "CHUNK", 16)
    code, out, err = run_in_process([*args, "--n", "40", "--batch-size", "16", "--out", str(tmp_path / "three")])
    assert code == 0, err
    code, _, err = run_in_process([*args, "--n", "16", "--out", str(tmp_path / "small")])
    assert code == 0, err
    one, three, small = (torch.load(tmp_path / d / "samples.pt")["x"] for d in ("one", "three", "small"))
    assert three.shape == one.shape == (40, 2)
    assert torch.equal(three[:16], small)
    torch.testing.assert_close(three, one, rtol=0, atol=1e-12)
    assert not torch.equal(three[16:32], three[:16])
    assert "(first 16 samples)" in out


def test_overwrite_replaces_results_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prepare(tmp_path, "study", b"")
    code, _, err = run_in_process([*STUDY, "--no-refine", "--overwrite", "--out", "o"])
    assert code == 0, err
    assert (tmp_path / "o" / "study.json").read_bytes() != b"{}"
    (tmp_path / "g.json").write_text("old")
    code, _, err = run_in_process([*GRID, "--max-evals", "2", "--overwrite", "--out", "g.json"])
    assert code == 0, err
    assert (tmp_path / "g.json").read_text().startswith("{")
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "samples.pt").write_bytes(b"old")
    code, _, err = run_in_process(["sample", "--n", "8", "--steps", "2", "--overwrite", "--out", "s"])
    assert code == 0, err
    assert torch.load(tmp_path / "s" / "samples.pt")["x"].shape == (8, 2)


def test_ctrl_c_in_any_command_is_one_line_and_exit_130(monkeypatch):
    from sde_diffusion.cli import sample as sample_cmd

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(sample_cmd, "run", interrupted)
    code, _, err = run_in_process(["sample"])
    assert code == 130 and err == "sde-diffusion sample: interrupted\n"
