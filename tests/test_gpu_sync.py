"""No host/device synchronisation inside the sampling loop (CUDA only).

``sample(..., sync_debug=True)`` runs the loop under ``torch.cuda.set_sync_debug_mode("error")``: any operation that
waits for the device (``.item()``, ``bool(tensor)``, ``.tolist()``, ``nonzero``, a pageable host-to-device copy,
...) raises. Run with ``python -m pytest -m gpu tests/test_gpu_sync.py`` on a CUDA machine.
"""

import pytest
import torch

from sde_diffusion import GaussianMixture, VPLinear, make_grid, sample
from sde_diffusion.solvers import get_solver, registered_solvers

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

FIXED = sorted(n for n in registered_solvers() if not getattr(get_solver(n), "adaptive", False))
DEV = "cuda"


def _problem(dtype=torch.float32):
    """A Gaussian-mixture oracle whose parameters already live on the device (so the model itself never copies)."""
    sch = VPLinear()
    mix = GaussianMixture(
        torch.tensor([[1.0, -1.0], [-2.0, 0.5]], dtype=dtype, device=DEV),
        torch.tensor([0.3, 0.5], dtype=dtype, device=DEV),
        torch.tensor([0.5, 0.5], dtype=dtype, device=DEV),
    )
    x = torch.randn(4, 2, dtype=dtype, device=DEV, generator=torch.Generator(device=DEV).manual_seed(0))
    return sch, mix.model(sch, "eps"), x


def _noise_kwargs(name):
    if get_solver(name).stochastic:
        return {"generator": torch.Generator(device=DEV).manual_seed(1)}
    return {}


@pytest.mark.parametrize("name", FIXED)
def test_shared_grid_loop_does_not_synchronise(name):
    sch, model, x = _problem()
    r = sample(model, x, solver=name, steps=6, sync_debug=True, **_noise_kwargs(name))
    assert r.x.device.type == "cuda" and bool(torch.isfinite(r.x).all())


@pytest.mark.parametrize("name", FIXED)
def test_per_sample_grid_loop_does_not_synchronise(name):
    sch, model, x = _problem()
    grids = torch.stack(
        [make_grid(sch, "logsnr", 6, t_start=1.0 - 0.1 * b, t_end=1e-3 * (b + 1)) for b in range(4)], dim=1
    )
    if get_solver(name).direction == "forward":  # inversion runs t_min -> t_max
        grids = grids.flip(0)
    try:
        r = sample(model, x, solver=name, grid=grids, sync_debug=True, **_noise_kwargs(name))
    except ValueError as e:  # solvers that need one grid for the whole batch say so before the loop
        pytest.skip(str(e))
    assert bool(torch.isfinite(r.x).all())


@pytest.mark.parametrize("name", [n for n in FIXED if get_solver(n).stochastic])
def test_host_noise_tensor_is_moved_once_without_synchronising(name):
    sch, model, x = _problem()
    noise = torch.randn(6, *x.shape)  # pageable host memory, float64
    # (a corrector's extra normals come from a device generator)
    r = sample(
        model,
        x,
        solver=name,
        steps=6,
        noise=noise,
        sync_debug=True,
        generator=torch.Generator(device=DEV).manual_seed(0),
    )
    assert bool(torch.isfinite(r.x).all())


def test_sync_debug_is_not_vacuous():
    """The mode does catch a host read on this machine."""
    sch, model, x = _problem()

    def bad_callback(i, t, x_):
        float(x_.sum())

    with pytest.raises(RuntimeError):
        sample(model, x, solver="ddim", steps=3, sync_debug=True, callback=bad_callback)


def test_cuda_matches_cpu():
    """Same numbers on the device (float64) as on the host, for every deterministic fixed-step solver."""
    sch, model, x = _problem(torch.float64)
    mix_cpu = GaussianMixture(torch.tensor([[1.0, -1.0], [-2.0, 0.5]]), torch.tensor([0.3, 0.5]))
    for name in FIXED:
        if get_solver(name).stochastic:
            continue
        a = sample(model, x, solver=name, steps=6).x.cpu()
        b = sample(mix_cpu.model(sch, "eps"), x.cpu(), solver=name, steps=6).x
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)
