"""The GPU check script, run on CPU at its small size (the full run needs CUDA: python benchmarks/gpu_check.py)."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
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


def test_cifar_unet_small_on_cpu(tmp_path):
    """The DDPM-CIFAR10 diffusers UNet check end to end at its tiny size (fp16 and bf16 weights, float32 state)."""
    pytest.importorskip("diffusers")
    gc = _load()
    full = gc.ddpm_cifar10_unet()  # the DDPM CIFAR-10 config values: about 36M parameters
    assert 35e6 < sum(p.numel() for p in full.parameters()) < 37e6
    del full
    report = gc.run_cifar_unet("cpu", "small", tmp_path)
    torch.set_default_dtype(torch.float64)  # the script trains in float32
    assert (tmp_path / "cifar_unet.md").read_text().startswith("device:")
    saved = json.loads((tmp_path / "cifar_unet.json").read_text())
    assert saved["ode"] and saved["scheduler_config"]["num_train_timesteps"] == 1000
    assert set(report["bare_model_ms"]) == {"fp16", "bf16"} and report["overhead_target"] == 1.05
    assert report["sync_checked"] is False  # sync_debug needs CUDA
    # the dopri5 reference is converged well below its own size
    assert report["reference_rms_change_tol_x100"] < 0.05 * report["reference_rms"]
    names = {row["solver"] for row in report["ode"]}
    assert {"ddim", "heun", "dpm_solver++", "euler_ancestral"} <= names and "ddim_inverse" not in names
    for row in report["ode"]:
        assert "error" not in row, row
        for key in ("fp16", "bf16"):
            assert row[f"finite_{key}"] is True and row[f"overhead_{key}"] > 0, row
            assert math.isfinite(row[f"ms_per_nfe_{key}"]), row
        if row["stochastic"]:
            assert row["err_fp16"] is None and row["err_bf16"] is None
        else:
            # same solver, half-precision weights of the same network: nearly the same distance to the reference
            assert math.isfinite(row["err_fp16"]) and math.isfinite(row["err_bf16"]), row
            assert abs(row["err_fp16"] - row["err_bf16"]) <= 0.05 * max(row["err_fp16"], report["reference_rms"]), row
    assert report["max_overhead"]["fp16"] == max(row["overhead_fp16"] for row in report["ode"])
