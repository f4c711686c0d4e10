"""The GPU check script, run on CPU at its small size (the full run needs CUDA: python benchmarks/gpu_check.py)."""

import importlib.util
import json
import math
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_check_small_on_cpu(tmp_path):
    gc = _load()
    report = gc.run("cpu", "small", tmp_path)
    torch.set_default_dtype(torch.float64)  # the script may train in float32
    assert (tmp_path / "gpu_check.md").read_text().startswith("device:")
    assert json.loads((tmp_path / "gpu_check.json").read_text())["ode"]
    names = {row["solver"] for row in report["ode"]}
    assert {"ddim", "heun"} <= names and "ddim_inverse" not in names
    for row in report["ode"]:
        assert row["sync_free"] is True, row
        assert math.isfinite(row["err_fp64"]) and math.isfinite(row["err_fp32"]), row
        # float32 state vs float64 state: same method, so nearly the same error
        assert abs(row["err_fp32"] - row["err_fp64"]) <= 1e-3 * max(1.0, row["err_fp64"]), row
    ddim = [row["err_fp64"] for row in report["ode"] if row["solver"] == "ddim"]
    assert ddim[1] < ddim[0]  # more NFE, smaller error against the dopri5 reference of the same network
    assert report["sde"] and all(math.isfinite(r["strong_err"]) for r in report["sde"])
