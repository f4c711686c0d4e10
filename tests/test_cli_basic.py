"""The ``sde-diffusion`` command line, run as a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sde_diffusion.schedules import EDM, SubVPLinear, VEGeometric, VPCosine, VPDiscrete, VPLinear

ROOT = Path(__file__).resolve().parents[1]

EXPECTED = {
    "vp-linear": VPLinear(),
    "vp-cosine": VPCosine(),
    "vp-discrete": VPDiscrete.from_config({"num_train_timesteps": 1000, "beta_schedule": "linear"}),
    "subvp-linear": SubVPLinear(),
    "ve": VEGeometric(),
    "edm": EDM(),
}


def _run(*args: str, cmd: list[str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = cmd or [sys.executable, "-m", "sde_diffusion.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def _parse_table(stdout: str) -> dict[str, list[tuple[float, float, float, float]]]:
    lines = stdout.strip().splitlines()
    head = lines.index(next(line for line in lines if set(line.strip()) == {"-"}))
    assert lines[head - 1].split()[:5] == ["name", "t", "alpha", "sigma", "lambda"]
    rows: dict[str, list] = {}
    name = None
    for line in lines[head + 1 :]:
        tokens = line.split()
        if not line.startswith(" "):
            name, tokens = tokens[0], tokens[1:]
        rows.setdefault(name, []).append(tuple(float(v) for v in tokens[:4]))
    return rows


def test_help():
    proc = _run("--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage: sde-diffusion" in proc.stdout
    assert "schedules" in proc.stdout


@pytest.mark.parametrize("dtype", [None, "float32"])
def test_schedules_table(dtype):
    proc = _run("schedules", *(["--dtype", dtype] if dtype else []))
    assert proc.returncode == 0, proc.stderr
    rows = _parse_table(proc.stdout)
    assert set(rows) == set(EXPECTED)
    for name, sch in EXPECTED.items():
        (t0, a0, s0, l0), (t1, a1, s1, l1) = rows[name]
        # values printed with 6 significant digits (rounding <= 5e-6 relative; 4 decimals for lambda). In float32 the
        # cosine schedule loses eps32/alpha ~ 1e-5 relative in alpha(t_max) ~ 8e-3 (1 - cos cancellation).
        rel = 5e-6 if dtype is None else 5e-5
        assert t0 == pytest.approx(sch.t_min, rel=1e-3) and t1 == pytest.approx(sch.t_max, rel=1e-3)
        for t, a, s, lam in ((sch.t_min, a0, s0, l0), (sch.t_max, a1, s1, l1)):
            assert a == pytest.approx(float(sch.alpha(t)), rel=rel)
            assert s == pytest.approx(float(sch.sigma(t)), rel=rel)
            assert lam == pytest.approx(float(sch.lambda_(t)), abs=5e-5 + 10 * rel)
        assert repr(sch) in proc.stdout


def test_unknown_command_is_a_usage_error():
    proc = _run("no-such-command")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr


@pytest.mark.skipif(shutil.which("sde-diffusion") is None, reason="console script not installed (pip install -e .)")
def test_console_script():
    proc = _run("schedules", cmd=[shutil.which("sde-diffusion")])
    assert proc.returncode == 0, proc.stderr
    assert set(_parse_table(proc.stdout)) == set(EXPECTED)
