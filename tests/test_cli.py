"""The ``sde-diffusion`` commands ``solvers``, ``study``, ``sample`` and ``optimise-grid``.

The commands run as subprocesses (``python -m sde_diffusion.cli``); the many error cases run in-process through
``cli.main`` (same code path, without paying for a fresh interpreter each time) and one of them as a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sde_diffusion import cli, registered_solvers, validate_grid
from sde_diffusion.studies import get_problem, load_bundle

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "sde_diffusion.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def test_solvers_lists_every_registered_solver():
    r = _run("solvers")
    assert r.returncode == 0, r.stderr
    names = {line.split()[0] for line in r.stdout.splitlines()[2:] if line.strip()}
    assert names == set(registered_solvers())
    ddim = next(line for line in r.stdout.splitlines() if line.startswith("ddim "))
    assert ddim.split()[1:5] == ["1", "-", "1", "no"] and "arXiv:2010.02502" in ddim


def test_solvers_json_in_process(capsys):
    assert cli.main(["solvers", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["heun"]["order"] == 2 and rows["heun"]["nfe_per_step"] == 2
    assert rows["ddpm"]["stochastic"] and rows["ddpm"]["strong_order"] == 1.0
    assert rows["ddim"]["option_names"] == ["eta"]


def test_study_quick_writes_json_and_png_with_fitted_orders(tmp_path):
    out = tmp_path / "s"
    r = _run("study", "--quick", "--out", str(out), "--solvers", "ddim", "heun")
    assert r.returncode == 0, r.stderr
    assert "effective order over NFE 5-20" in r.stdout and "| `heun` | 2 |" in r.stdout
    assert (out / "study.png").read_bytes()[:4] == b"\x89PNG"
    doc = json.loads((out / "study.json").read_text())
    assert doc["schema_version"] == 2 and doc["command"].startswith("sde-diffusion study --quick")
    studies = load_bundle(doc)
    assert set(studies) == {"main", "order"}
    main, order = studies["main"], studies["order"]
    assert (main.problem, order.problem) == ("ring", "gauss2d") and main.budgets == [5, 10, 20]
    assert order.fit("ddim").order == pytest.approx(1.0, abs=0.2)
    assert r.stderr == ""  # no progress bars when not a terminal


def test_study_default_folder_and_options_in_process(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    second = "dpm_solver++:order=2" if "dpm_solver++" in registered_solvers() else "euler"
    assert (
        cli.main(
            [
                "study",
                "--quick",
                "--problem",
                "gauss16",
                "--schedule",
                "edm",
                "--solvers",
                "ddim",
                second,
                "--nfe",
                "4,8",
                "--order-problem",
                "none",
                "--dtype",
                "float32",
                "--figures",
            ]
        )
        == 0
    )
    assert "| `ddim` |" in capsys.readouterr().out
    (folder,) = tmp_path.glob("study-*")
    (main,) = load_bundle((folder / "study.json").read_text()).values()
    assert (main.problem, main.schedule, main.dtype, main.budgets) == ("gauss16", "edm", "float32", [4, 8])
    assert {p.name for p in folder.glob("*.png")} >= {"study.png", "main_error.png", "main_work_precision.png"}


def test_sample_saves_samples_and_scatter(tmp_path):
    r = _run("sample", "--problem", "ring", "--solver", "heun", "--nfe", "9", "--n", "64", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    saved = torch.load(tmp_path / "samples.pt")
    assert saved["x"].shape == (64, 2) and saved["nfe"] == 9 and saved["solver"] == "heun"
    assert (tmp_path / "samples.png").read_bytes()[:4] == b"\x89PNG"
    assert "NFE 9" in r.stdout and "sliced_w2" in r.stdout


def test_optimise_grid_prints_and_saves_a_valid_grid(tmp_path):
    path = tmp_path / "grid.json"
    r = _run("optimise-grid", "--quick", "--nfe", "6", "--out", str(path))
    assert r.returncode == 0, r.stderr
    d = json.loads(path.read_text())
    grid = torch.tensor(d["grid"], dtype=torch.float64)
    validate_grid(get_problem("ring").schedule, grid)
    assert len(grid) == 7 and d["heldout_error"] < d["heldout_error_init"]
    assert "held-out RMS error" in r.stdout


def test_unknown_solver_is_one_line_exit_2_as_a_subprocess():
    r = _run("study", "--solvers", "nosuch")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "valid solvers:" in r.stderr and "ddim" in r.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        (["study", "--problem", "moons"], "valid problems: point, gauss2d, gauss16, ring, gmm64"),
        (["study", "--schedule", "vp-square"], "valid schedules: vp-linear"),
        (["study", "--grid", "nosuch"], "valid grids: time_uniform"),
        (["study", "--order-problem", "x"], "valid problems:"),
        (["study", "--solvers", "ddim:bogus=1"], "valid options: eta"),
        (["study", "--solvers", "ddim:eta"], "key=value"),
        (["study", "--reference", "magic"], "valid references: auto"),
        (["sample", "--solver", "nosuch"], "valid solvers:"),
        (["sample", "--checkpoint", "model.pt"], "no such file"),
        (["sample", "--nfe", "1", "--solver", "heun:variable=sigma", "--problem", "nosuch"], "valid problems"),
        (["optimise-grid", "--solver", "ddpm"], "deterministic"),
        (["optimize-grid", "--problem", "moons"], "valid problems"),
    ],
)
def test_usage_errors_are_one_line_with_exit_status_2(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("sde-diffusion ")


@pytest.mark.parametrize("argv", [["study", "--nfe", "x"], ["study", "--dtype", "float16"], ["nosuch"]])
def test_argparse_errors_are_one_line_with_exit_status_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err


def test_schedules_still_works(capsys):
    assert cli.main(["schedules"]) == 0
    assert "vp-discrete" in capsys.readouterr().out


@pytest.mark.slow
def test_default_study_runs_within_its_budget(tmp_path):
    """``sde-diffusion study`` with no options: ring x NFE 5-50 and the Gaussian order study, under 60 s of study
    time, with the Gaussian orders of DDIM and Heun fitted to their declared values."""
    r = _run("study", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "study.json").read_text())
    assert doc["elapsed_s"] < 60
    order = load_bundle(doc)["order"]
    assert order.fit("ddim").order == pytest.approx(1.0, abs=0.1)
    assert order.fit("heun").order == pytest.approx(2.0, abs=0.3)


def test_study_stochastic_writes_the_distribution_error_of_every_solver(tmp_path, capsys):
    """``study --stochastic`` adds the distribution error per NFE of every registered solver (stochastic and
    deterministic, one footing): exact W2 on gauss2d, finite, smaller at the larger budget for the ancestral DDPM."""
    out = tmp_path / "s"
    args = ["study", "--quick", "--stochastic", "--no-refine", "--order-problem", "gauss2d", "--out", str(out)]
    assert cli.main(args) == 0
    assert "distribution error per NFE" in capsys.readouterr().out
    dist = json.loads((out / "distribution.json").read_text())
    rows = dist["problems"]["gauss2d"]
    stochastic = {n for n, c in registered_solvers().items() if c.stochastic}
    assert {"euler_ancestral", "sde_dpm_solver++_3m", "dpm_solver++", "unipc"} <= set(rows)
    assert stochastic - {"ddim_inverse"} <= set(rows) | {"ddpm"}
    cells = rows["euler_ancestral"]
    assert cells["5"]["metric"] == "exact W2" and cells["20"]["error"] < cells["5"]["error"]
    assert all(c is None or (c["error"] >= 0 and c["error"] < float("inf")) for r in rows.values() for c in r.values())


def test_sample_analytic_first_step_buys_one_step(tmp_path):
    """--analytic-first-step: the same NFE budget, one step more (the first evaluation is analytic)."""
    r = _run(
        "sample", "--problem", "ring", "--solver", "ipndm", "--nfe", "5", "--n", "32", "--analytic-first-step",
        "--out", str(tmp_path / "afs"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    saved = torch.load(tmp_path / "afs" / "samples.pt")
    assert saved["nfe"] == 5 and saved["ts"].shape == (7,)  # 6 steps for 5 network evaluations
    assert "6 steps, NFE 5" in r.stdout
    r = _run("sample", "--problem", "ring", "--solver", "adaptive_multistep", "--analytic-first-step")
    assert r.returncode != 0 and "fixed grid" in r.stderr
