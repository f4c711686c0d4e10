"""The sampling loop's hygiene: plan/grid caches, no host reads inside the loop, torch.compile, bounded memory."""

import importlib
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sde_diffusion import GaussianMixture, Model, PointMass, Sampler, VPLinear, make_grid, sample
from sde_diffusion.solvers import get_solver, registered_solvers
from sde_diffusion.solvers.base import base_coefficients, lincomb, plan_cache_stats, prepare_plan

sample_module = importlib.import_module("sde_diffusion.sample")  # the package re-exports the function as `sample`


def _fixed_step_solvers():
    out = []
    for name in sorted(registered_solvers()):
        solver = get_solver(name)
        if not solver.adaptive:
            out.append(name)
    return out


FIXED = _fixed_step_solvers()


def _mixture():
    return GaussianMixture(torch.tensor([[1.0, -1.0], [-2.0, 0.5]]), torch.tensor([0.3, 0.5]))


def _run(model, x, name, steps=6, **kw):
    solver = get_solver(name)
    if solver.stochastic:
        kw.setdefault("generator", torch.Generator().manual_seed(0))
    return sample(model, x, solver=name, steps=steps, **kw)


# ---------------------------------------------------------------------------------------------------------------------
# caches
# ---------------------------------------------------------------------------------------------------------------------


def test_repeated_calls_hit_the_plan_cache_and_coefficients_are_computed_once(monkeypatch):
    sch = VPLinear()
    model = PointMass(torch.tensor([0.5, -0.5])).model(sch)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    solver = get_solver("plms")
    calls = {"coefficients": 0, "make_grid": 0}
    orig_coefficients, orig_make_grid = type(solver).coefficients, sample_module.make_grid

    def counting_coefficients(self, *a, **k):
        calls["coefficients"] += 1
        return orig_coefficients(self, *a, **k)

    def counting_make_grid(*a, **k):
        calls["make_grid"] += 1
        return orig_make_grid(*a, **k)

    monkeypatch.setattr(type(solver), "coefficients", counting_coefficients)
    monkeypatch.setattr(sample_module, "make_grid", counting_make_grid)
    steps = 17  # a step count no other test uses, so the first call is a miss
    hits0, misses0 = plan_cache_stats["hits"], plan_cache_stats["misses"]
    first = sample(model, x, solver=solver, steps=steps)
    for _ in range(3):
        again = sample(model, x, solver="plms", steps=steps)  # a new, equal solver instance hits too
    assert plan_cache_stats["misses"] - misses0 == 1 and plan_cache_stats["hits"] - hits0 == 3
    assert calls == {"coefficients": 1, "make_grid": 1}
    torch.testing.assert_close(first.x, again.x, rtol=0, atol=0)
    # an explicit tensor grid equal to the named one reuses the same plan
    ts = make_grid(sch, "logsnr", steps)
    assert prepare_plan(solver, sch, ts, x) is prepare_plan(get_solver("plms"), sch, ts.clone(), x)
    # a different grid, solver option, dtype or schedule is a miss
    sample(model, x, solver="plms", steps=steps + 1)
    sample(model, x, solver="ipndm", ab_order=2, steps=steps)
    sample(model, x.float(), solver="plms", steps=steps)
    sample(PointMass(torch.tensor([0.5, -0.5])).model(VPLinear(beta_max=19.0)), x, solver="plms", steps=steps)
    assert plan_cache_stats["misses"] - misses0 == 5
    # the result's grid is the caller's to keep: mutating it does not touch the cache
    first.ts.zero_()
    torch.testing.assert_close(sample(model, x, solver="plms", steps=steps).x, again.x, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------------
# no host reads inside the loop
# ---------------------------------------------------------------------------------------------------------------------

#: operators that read device data on the host (a device synchronisation on CUDA) or copy host data to the device
HOST_READS = {
    "_local_scalar_dense",
    "nonzero",
    "masked_select",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "lift_fresh",
    "lift_fresh_copy",
    "equal",
    "is_nonzero",
}


class _HostReadRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in HOST_READS:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", FIXED)
def test_loop_has_no_host_reads(name, monkeypatch):
    """CPU stand-in for the CUDA sync test: record every dispatched operator that reads a tensor's value on the
    host (``.item()``, ``bool``, ``float``, ``nonzero``, ...) or builds a tensor from host data while the loop runs.
    The plan is prepared by a first call (host work is allowed there) and the loop is wrapped via ``_sync_debug``."""
    sch = VPLinear()
    model = _mixture().model(sch, "eps")
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    _run(model, x, name)  # warm the plan cache
    recorder = _HostReadRecorder()

    class _Record:
        def __init__(self, enabled, device):
            pass

        def __enter__(self):
            recorder.__enter__()

        def __exit__(self, *exc):
            recorder.__exit__(*exc)

    monkeypatch.setattr(sample_module, "_sync_debug", _Record)
    _run(model, x, name, check_finite=True)
    assert recorder.seen == [], f"{name}: host reads in the loop: {sorted(set(recorder.seen))}"


def test_host_read_recorder_catches_an_item_call(monkeypatch):
    """The recorder above is not vacuous."""
    recorder = _HostReadRecorder()
    with recorder:
        x = torch.ones(3)
        float(x.sum())
        bool(x[0] > 0)
        torch.tensor(0.5)
    assert "_local_scalar_dense" in recorder.seen and "lift_fresh" in recorder.seen


# ---------------------------------------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------------------------------------


def _compile_case(name, opts, backend):
    torch._dynamo.reset()
    sch = VPLinear()
    model = _mixture().model(sch, "eps")
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    s = Sampler(model, x, solver=name, steps=2, **opts)
    compiled = torch.compile(s.solver.step, backend=backend, fullgraph=True)
    xe, se = s.init(x)
    xc, sc = s.init(x)
    for i in range(s.num_steps):
        c = s.plan.steps[i]
        xe, se = s.solver.step(model, xe, se, c, None)
        xc, sc = compiled(model, xc, sc, c, None)
        torch.testing.assert_close(xc, xe, rtol=1e-12, atol=1e-12)
    return model


COMPILE_CASES = [("ddim", {}), ("dpm_solver++", {"order": 2, "multistep": True}), ("plms", {})]


@pytest.mark.parametrize("name,opts", COMPILE_CASES, ids=[n for n, _ in COMPILE_CASES])
def test_step_traces_without_graph_breaks(name, opts):
    """``torch.compile(step, fullgraph=True)``: dynamo traces the whole step (model call included) without a graph
    break, and the compiled step gives the eager result (``aot_eager``: tracing and functionalisation, no codegen)."""
    if name not in registered_solvers():
        pytest.skip(f"{name} is not registered")
    _compile_case(name, opts, "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("name,opts", COMPILE_CASES[:2], ids=[n for n, _ in COMPILE_CASES[:2]])
def test_step_compiles_with_inductor(name, opts):
    """The same with inductor code generation (needs a C++ compiler; slow on small machines)."""
    if name not in registered_solvers():
        pytest.skip(f"{name} is not registered")
    _compile_case(name, opts, "inductor")


# ---------------------------------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------------------------------


def _tracked_model(schedule, prediction):
    """A model whose raw outputs are fresh tensors, each tracked by a weak reference."""
    oracle = _mixture().model(schedule, prediction)
    refs = []

    def fn(x, t):
        out = oracle.fn(x, t).clone()
        refs.append(weakref.ref(out))
        return out

    return Model(fn, schedule, prediction), refs


@pytest.mark.parametrize("prediction", ["eps", "x0"])
@pytest.mark.parametrize("name", FIXED)
def test_solvers_keep_no_more_model_outputs_than_their_memory(name, prediction):
    sch = VPLinear()
    model, refs = _tracked_model(sch, prediction)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    kw = {"generator": torch.Generator().manual_seed(0)} if get_solver(name).stochastic else {}
    s = Sampler(model, x, solver=name, steps=8, **kw)
    x, state = s.init(x)
    for i in range(s.num_steps):
        x, state = s.step(x, state, i)
        alive = sum(r() is not None for r in refs)
        assert alive <= s.solver.memory, (name, i, alive, s.solver.memory)


MULTISTEP = [
    ("plms", {}, 4),
    ("pndm", {"warmup": "heun"}, 2),
    ("pndm", {"warmup": "rk4"}, 4),
    ("ipndm", {"ab_order": 3}, 3),
    ("dpm_solver++", {"order": 2, "multistep": True}, 2),
    ("dpm_solver++", {"order": 3, "multistep": True}, 3),
    ("deis", {"order": 3}, 3),
]


@pytest.mark.parametrize("name,opts,k", MULTISTEP, ids=[f"{n}-{k}" for n, _, k in MULTISTEP])
def test_k_step_methods_keep_at_most_k_minus_one_past_outputs(name, opts, k):
    if name not in registered_solvers():
        pytest.skip(f"{name} is not registered")
    solver = get_solver(name, **opts)
    assert solver.memory <= k - 1
    sch = VPLinear()
    model, refs = _tracked_model(sch, "x0" if name == "dpm_solver++" else "eps")
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    s = Sampler(model, x, solver=solver, steps=8)
    x, state = s.init(x)
    peak = 0
    for i in range(s.num_steps):
        x, state = s.step(x, state, i)
        peak = max(peak, sum(r() is not None for r in refs))
        assert sum(isinstance(v, torch.Tensor) for v in state) <= k - 1
    assert peak <= k - 1


# ---------------------------------------------------------------------------------------------------------------------
# the fast linear combination
# ---------------------------------------------------------------------------------------------------------------------


def test_lincomb_matches_the_plain_expression_for_float_tensor_and_unit_coefficients():
    g = torch.Generator().manual_seed(0)
    x, y, z = (torch.randn(3, 2, 4, generator=g) for _ in range(3))
    a, w = torch.rand(3, 1, 1, generator=g), torch.rand(3, 1, 1, generator=g)
    torch.testing.assert_close(lincomb(0.7, x, 0.2, y, -1.5, z), 0.7 * x + 0.2 * y - 1.5 * z)
    torch.testing.assert_close(lincomb(a, x, w, y, 0.3, z), a * x + w * y + 0.3 * z)
    torch.testing.assert_close(lincomb(1.0, x, w, y), x + w * y)
    torch.testing.assert_close(lincomb(1.0, x, 0.5, y), x + 0.5 * y)
    torch.testing.assert_close(lincomb(torch.tensor(0.25), x), 0.25 * x)
    x_before = x.clone()
    lincomb(1.0, x, 2.0, y)
    torch.testing.assert_close(x, x_before, rtol=0, atol=0)  # inputs are never written


def test_multiplier_columns_become_host_scalars_of_the_state_dtype():
    sch = VPLinear()
    x = torch.zeros(2, 3, dtype=torch.float32)
    plan = prepare_plan(get_solver("ipndm", ab_order=2), sch, make_grid(sch, "logsnr", 5), x)
    ratio = plan.steps[2].ratio
    assert isinstance(ratio, torch.Tensor) and ratio.ndim == 0 and ratio.dtype == torch.float32
    assert ratio.device.type == "cpu"
    base = base_coefficients(sch, make_grid(sch, "logsnr", 5))
    torch.testing.assert_close(float(ratio), float(base["alpha_next"][2] / base["alpha"][2]), rtol=1e-6, atol=0)
    assert isinstance(plan.steps[2].w, tuple) and all(isinstance(w, float) for w in plan.steps[2].w)
