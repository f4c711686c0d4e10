"""diffusers interop: schedules from configs, networks as Models, and SDEScheduler inside real pipelines.

Every diffusers component is a tiny randomly initialised network built from a config here (no downloads). The
pipelines run in float32 (diffusers' own dtype); agreement with diffusers' DDIM and DPM-Solver++(2M) schedulers is
checked on the same timesteps, and every fixed-grid solver run through a pipeline must equal our own ``sample`` on the
same grid and noise.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusers_tiny import default_float32, sd_ddim, tiny_sd_pipeline, tiny_unet2d  # noqa: E402

from sde_diffusion import VPDiscrete, betas_from_config, sample  # noqa: E402
from sde_diffusion.interop.diffusers import (  # noqa: E402
    SDEScheduler,
    diffusers_model,
    fixed_grid_solvers,
    prediction_from_config,
    t_to_timestep,
    timestep_to_t,
)
from sde_diffusion.latent import LatentModel  # noqa: E402

F32 = torch.float32


@pytest.fixture(autouse=True)
def _float32():
    with default_float32():
        yield


# ---------------------------------------------------------------------------------------------------------------------
# schedules and labels
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace", "exp"])
def test_every_beta_schedule_matches_diffusers(kind):
    cls = diffusers.HeunDiscreteScheduler if kind == "exp" else diffusers.DDPMScheduler
    ref = cls(num_train_timesteps=500, beta_schedule=kind, beta_start=0.00085, beta_end=0.012)
    ours = betas_from_config(ref.config)
    assert ours.dtype == torch.float64 and ours.shape == (500,)
    # diffusers stores float32 betas: agreement to float32 rounding
    assert torch.allclose(ours, ref.betas.double(), rtol=4e-7, atol=0)
    sch = VPDiscrete.from_config(ref.config)
    ac = ref.alphas_cumprod.double()
    t = timestep_to_t(sch, torch.arange(500, dtype=torch.float64))
    assert torch.allclose(sch.alpha(t) ** 2, ac, rtol=2e-5, atol=0)  # (float32 cumprod of 500 factors)


def test_trained_betas_win_and_zero_snr_is_refused():
    betas = torch.linspace(1e-4, 0.03, 50, dtype=torch.float64)
    assert torch.equal(betas_from_config({"trained_betas": betas.tolist(), "beta_schedule": "nope"}), betas)
    with pytest.raises(ValueError, match="lambda"):
        betas_from_config({"rescale_betas_zero_snr": True})
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        SDEScheduler(rescale_betas_zero_snr=True)
    with pytest.raises(ValueError, match="laplace"):
        betas_from_config({"beta_schedule": "quadratic"})


def test_prediction_types_and_label_map():
    assert [prediction_from_config({"prediction_type": k}) for k in ("epsilon", "sample", "v_prediction")] == [
        "eps",
        "x0",
        "v",
    ]
    assert prediction_from_config({}) == "eps"
    with pytest.raises(ValueError, match="prediction_type"):
        prediction_from_config({"prediction_type": "flow"})
    sch = VPDiscrete.from_config({"num_train_timesteps": 250})
    k = torch.arange(250, dtype=torch.float64)
    assert torch.equal(t_to_timestep(sch, timestep_to_t(sch, k)), k)
    assert timestep_to_t(sch, 0.0) == sch.t_min and timestep_to_t(sch, 249.0) == sch.t_max


def test_import_sde_diffusion_does_not_import_diffusers():
    code = "import sys, sde_diffusion, sde_diffusion.interop; assert 'diffusers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------------------------------
# networks as Models
# ---------------------------------------------------------------------------------------------------------------------


def test_unet2d_model_wrapper_calls_the_network_at_the_label():
    unet = tiny_unet2d()
    cfg = diffusers.DDPMScheduler(prediction_type="v_prediction").config
    m = diffusers_model(unet, cfg)
    assert m.prediction == "v"
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([0.5005, 0.9])
    seen = []
    unet.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(args[1]), with_kwargs=True)
    with torch.no_grad():
        got = m(x, t)
        # the label 1000 (t - 1/N), N = 1000, in the state's float32 (one rounding: ~3e-5 at 500)
        assert torch.allclose(seen[0].double(), torch.tensor([499.5, 899.0], dtype=torch.float64), rtol=0, atol=1e-4)
        want = unet(x, seen[0]).sample
    assert torch.equal(got, want)  # the network's own output, unconverted (v prediction)


def test_class_labels_and_guidance_are_one_batched_call():
    unet = tiny_unet2d(num_class_embeds=4)
    calls = []
    unet.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    cfg = diffusers.DDPMScheduler().config
    x, t = torch.randn(3, 3, 8, 8), torch.full((3,), 0.7)
    cond, null = torch.tensor([1]), torch.tensor([0])
    guided = diffusers_model(unet, cfg, class_labels=cond, uncond_class_labels=null, guidance_scale=2.5)
    with torch.no_grad():
        out = guided(x, t)
        assert calls == [6]  # one call on [x, x]
        c = diffusers_model(unet, cfg, class_labels=cond)(x, t)
        u = diffusers_model(unet, cfg, class_labels=null)(x, t)
    assert guided.nfe == 1
    assert torch.allclose(out, u + 2.5 * (c - u), atol=2e-5)
    with pytest.raises(ValueError, match="uncond"):
        diffusers_model(unet, cfg, class_labels=cond, guidance_scale=2.0)
    with pytest.raises(ValueError, match="batch"):
        diffusers_model(unet, cfg, class_labels=torch.tensor([1, 2]))(x, t)


# ---------------------------------------------------------------------------------------------------------------------
# SDEScheduler in a DDPMPipeline (pixel space, UNet2DModel)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ddpm_pipe():
    with default_float32():
        unet = tiny_unet2d()
    inputs = []
    unet.register_forward_hook(lambda mod, args, out: inputs.append(args[0].detach().clone()))
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe, inputs


def _run_ddpm(pipe, inputs, scheduler, steps=8):
    pipe.scheduler = scheduler
    inputs.clear()
    with torch.no_grad():
        out = pipe(
            batch_size=2, generator=torch.Generator().manual_seed(1), num_inference_steps=steps, output_type="np"
        )
    return torch.from_numpy(out.images), torch.stack(inputs)


REFERENCES = {
    "ddim_leading": lambda: diffusers.DDIMScheduler(clip_sample=False),
    "ddim_offset1": lambda: diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=1),
    "ddim_trailing": lambda: diffusers.DDIMScheduler(clip_sample=False, timestep_spacing="trailing"),
    "ddim_v_prediction": lambda: diffusers.DDIMScheduler(clip_sample=False, prediction_type="v_prediction"),
    "ddim_sample_prediction": lambda: diffusers.DDIMScheduler(clip_sample=False, prediction_type="sample"),
    "dpm2m_zero": lambda: diffusers.DPMSolverMultistepScheduler(),
    "dpm2m_trailing": lambda: diffusers.DPMSolverMultistepScheduler(timestep_spacing="trailing"),
    "dpm2m_sigma_min": lambda: diffusers.DPMSolverMultistepScheduler(final_sigmas_type="sigma_min"),
    "dpm2m_v_prediction": lambda: diffusers.DPMSolverMultistepScheduler(prediction_type="v_prediction"),
}


def _ours_for(ref):
    if isinstance(ref, diffusers.DDIMScheduler):
        return SDEScheduler.from_config(ref, solver="ddim")
    # diffusers' 2M takes a first-order last step (below 15 steps); landing on sigma = 0 that step is our final
    # denoising, landing on sigma_min it is our last interval
    last_low = ref.config.final_sigmas_type != "zero"
    return SDEScheduler.from_config(ref, solver="dpm_solver++", order=2, lower_order_final=last_low)


@pytest.mark.parametrize("name", list(REFERENCES))
def test_ddpm_pipeline_matches_diffusers_schedulers(ddpm_pipe, name):
    pipe, inputs = ddpm_pipe
    ref = REFERENCES[name]()
    img_ref, traj_ref = _run_ddpm(pipe, inputs, ref)
    ours = _ours_for(ref)
    img, traj = _run_ddpm(pipe, inputs, ours)
    assert traj.dtype == F32
    assert torch.equal(ours.timesteps, ref.timesteps)
    assert (img - img_ref).abs().max() <= 1e-5
    # the states the network was evaluated at (large: x0 of a random network is far from the data): float32 rounding
    assert (traj - traj_ref).abs().max() <= 1e-5 * traj_ref.abs().max()


def test_diffusers_grid_without_class_name_falls_back_to_ddim():
    ref = diffusers.DDIMScheduler(clip_sample=False, steps_offset=1, timestep_spacing="trailing")
    ours = SDEScheduler.from_config(dict(ref.config), solver="ddim")  # (its settings are still used)
    ours.set_timesteps(8)
    ref.set_timesteps(8)
    assert torch.equal(ours.timesteps, ref.timesteps)


# ---------------------------------------------------------------------------------------------------------------------
# a tiny latent text-to-image StableDiffusionPipeline (UNet2DConditionModel, AutoencoderKL, CLIP)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd_pipe(tmp_path_factory):
    with default_float32():
        return tiny_sd_pipeline(tmp_path_factory.mktemp("clip"))


PROMPT, NEGATIVE, SCALE = "a cat", "dog", 3.0


def _run_sd(pipe, scheduler, steps=6, output_type="latent", seed=0):
    pipe.scheduler = scheduler
    with torch.no_grad():
        return pipe(
            PROMPT,
            negative_prompt=NEGATIVE,
            height=16,
            width=16,
            num_inference_steps=steps,
            guidance_scale=SCALE,
            generator=torch.Generator().manual_seed(seed),
            output_type=output_type,
        ).images


@pytest.mark.parametrize("kind", ["ddim", "dpm2m"])
def test_stable_diffusion_matches_diffusers_schedulers(sd_pipe, kind):
    base = sd_ddim()
    ref = base if kind == "ddim" else diffusers.DPMSolverMultistepScheduler.from_config(base.config)
    lat_ref = _run_sd(sd_pipe, ref)
    lat = _run_sd(sd_pipe, _ours_for(ref))
    assert lat.dtype == F32
    assert (lat - lat_ref).abs().max() <= 1e-5 * lat_ref.abs().max()
    img_ref = _run_sd(sd_pipe, ref, output_type="pt")
    img = _run_sd(sd_pipe, _ours_for(ref), output_type="pt")
    assert (img - img_ref).abs().max() <= 1e-5


def test_custom_timesteps_match_diffusers(sd_pipe):
    """``pipe(timesteps=[...])`` (the pipeline's ``retrieve_timesteps``): the given labels, then a final denoising --
    DPM-Solver++(2M) with ``final_sigmas_type="zero"``."""
    ref = diffusers.DPMSolverMultistepScheduler.from_config(sd_ddim().config)
    labels = [999, 749, 499, 249, 99]

    def run(s):
        sd_pipe.scheduler = s
        with torch.no_grad():
            return sd_pipe(
                PROMPT, negative_prompt=NEGATIVE, height=16, width=16, timesteps=labels, guidance_scale=SCALE,
                generator=torch.Generator().manual_seed(0), output_type="latent",
            ).images  # fmt: skip

    lat_ref, lat = run(ref), run(_ours_for(ref))
    assert torch.equal(sd_pipe.scheduler.timesteps, torch.tensor(labels))
    assert (lat - lat_ref).abs().max() <= 1e-5 * lat_ref.abs().max()


def _guided_model(pipe, config):
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE)
    return diffusers_model(
        pipe.unet, config, encoder_hidden_states=cond, uncond_encoder_hidden_states=uncond, guidance_scale=SCALE
    )


@pytest.mark.parametrize("solver", fixed_grid_solvers())
def test_every_fixed_grid_solver_runs_in_the_pipeline_as_in_sample(sd_pipe, solver):
    """The pipeline's own loop driving SDEScheduler gives our ``sample`` on the same grid and noise (multi-evaluation
    steps included), and stays finite."""
    ddim = sd_ddim()
    sch = SDEScheduler.from_config(ddim, solver=solver)
    lat = _run_sd(sd_pipe, sch, steps=4)
    assert torch.isfinite(lat).all()
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(lat.shape, generator=g)  # the pipeline draws its latents first, then the solver's noise
    with torch.no_grad():
        ref = sample(_guided_model(sd_pipe, ddim.config), x_T, solver=solver, grid=_ddim_grid(ddim, 4), generator=g)
    assert ref.nfe == len(sch.timesteps)
    assert (lat - ref.x).abs().max() <= 1e-5 * ref.x.abs().max()


def _ddim_grid(ddim, steps):
    """DDIM's timesteps as times, then its last target alphas_cumprod[0] (``set_alpha_to_one=False``): t = 1/N."""
    ddim.set_timesteps(steps)
    sch = VPDiscrete.from_config(ddim.config)
    grid = timestep_to_t(sch, ddim.timesteps.to(torch.float64))
    return torch.cat([grid, grid.new_tensor([sch.t_min])])


def test_latent_model_reproduces_the_stable_diffusion_pipeline(sd_pipe):
    """LatentModel (scaled_linear schedule, the VAE's scaling factor) + our sampler = the pipeline's images."""
    ddim = sd_ddim()
    steps = 5
    img = _run_sd(sd_pipe, SDEScheduler.from_config(ddim, solver="unipc"), steps=steps, output_type="pt")
    lm = LatentModel.from_vae(_guided_model(sd_pipe, ddim.config), sd_pipe.vae)
    assert lm.scaling_factor == sd_pipe.vae.config.scaling_factor
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(1, 4, 16, 16, generator=g)  # (the tiny VAE does not downsample)
    with torch.no_grad():
        out = lm.sample(x_T, solver="unipc", grid=_ddim_grid(ddim, steps))
    assert (img - (out.x / 2 + 0.5).clamp(0, 1)).abs().max() <= 1e-5  # the pipeline's postprocessing


def test_our_grids_in_the_pipeline(sd_pipe):
    """``grid="karras"`` (any of our grid names): ``num_inference_steps`` intervals from t_max to t_min, no final
    denoising unless asked; the pipeline gives our ``sample`` on that grid."""
    ddim = sd_ddim()
    sch = SDEScheduler.from_config(ddim, solver="dpm_solver++", grid="karras")
    lat = _run_sd(sd_pipe, sch, steps=5)
    assert len(sch.timesteps) == 5 and sch.timesteps.dtype == torch.float32  # (off the training grid)
    x_T = torch.randn(lat.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = sample(_guided_model(sd_pipe, ddim.config), x_T, solver="dpm_solver++", grid="karras", steps=5)
    assert (lat - ref.x).abs().max() <= 1e-5 * ref.x.abs().max()
    denoised = SDEScheduler.from_config(ddim, solver="dpm_solver++", grid="karras", denoise_to_zero=True)
    denoised.set_timesteps(5)
    assert len(denoised.timesteps) == 6


def test_stochastic_solver_with_a_generator_per_image(sd_pipe):
    sd_pipe.scheduler = SDEScheduler.from_config(sd_ddim(), solver="ddpm")
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    with torch.no_grad():
        out = sd_pipe(
            PROMPT, height=16, width=16, num_inference_steps=4, num_images_per_prompt=2, generator=gens,
            output_type="latent",
        ).images  # fmt: skip
    assert out.shape[0] == 2 and torch.isfinite(out).all()


def test_multi_evaluation_solvers_repeat_like_diffusers_heun(sd_pipe):
    sch = SDEScheduler.from_config(sd_ddim(), solver="heun")
    sch.set_timesteps(5)
    # Heun: 2 evaluations per interval (the second at the interval's end), the last interval an Euler step, as in
    # diffusers' HeunDiscreteScheduler; the pipeline counts steps by `order`
    assert sch.order == 2 and sch.num_inference_steps == 5
    assert len(sch.timesteps) == 2 * 5 - 1
    assert sch.timesteps.dtype == torch.int64  # evaluation times on the training grid
    singlestep = SDEScheduler.from_config(sch.config, solver="dpm_solver", order=3, multistep=False)
    singlestep.set_timesteps(5)
    assert singlestep.timesteps.dtype == torch.float32  # stages between grid points get fractional labels


def _img2img(sd_pipe, scheduler):
    pipe = diffusers.StableDiffusionImg2ImgPipeline(**{**sd_pipe.components, "scheduler": scheduler})
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return pipe(
            PROMPT, image=image, strength=0.6, num_inference_steps=5, guidance_scale=SCALE,
            generator=torch.Generator().manual_seed(0), output_type="latent",
        ).images  # fmt: skip


def test_img2img_strength_matches_diffusers(sd_pipe):
    ddim = sd_ddim()
    ref, ours = _img2img(sd_pipe, ddim), _img2img(sd_pipe, SDEScheduler.from_config(ddim, solver="ddim"))
    assert (ours - ref).abs().max() <= 1e-5 * ref.abs().max()
    assert torch.isfinite(_img2img(sd_pipe, SDEScheduler.from_config(ddim, solver="unipc", predictor_order=3))).all()
    # strength 0.6 of 5 steps starts at step 2: evaluation 2 * order
    assert torch.isfinite(_img2img(sd_pipe, SDEScheduler.from_config(ddim, solver="heun"))).all()
    with pytest.raises(ValueError, match="step boundary"):  # steps of 3, 3, 3, 2, 1 evaluations: order 1
        _img2img(sd_pipe, SDEScheduler.from_config(ddim, solver="dpm_solver", order=3, multistep=False))
    sch = SDEScheduler.from_config(ddim, solver="unipc")
    sch.set_timesteps(5)
    sch.set_begin_index(2)
    sch.set_begin_index(3)  # from the whole grid again, not from the previous start
    assert sch.begin_index == 3 and sch.timesteps.tolist() == ddim.timesteps.tolist()


def _inpaint(sd_pipe, scheduler, strength):
    pipe = diffusers.StableDiffusionInpaintPipeline(**{**sd_pipe.components, "scheduler": scheduler})
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1.0
    with torch.no_grad():
        return pipe(
            PROMPT, image=image, mask_image=mask, height=16, width=16, strength=strength, num_inference_steps=5,
            guidance_scale=SCALE, generator=torch.Generator().manual_seed(0), output_type="latent",
        ).images  # fmt: skip


def test_inpainting_matches_diffusers(sd_pipe):
    """A 4-channel UNet in StableDiffusionInpaintPipeline: the pipeline overwrites the known region of the state
    after every step (``add_noise`` at the next timestep); one-evaluation-per-step solvers take the edited state."""
    ddim = sd_ddim()
    for strength in (1.0, 0.6):
        ref = _inpaint(sd_pipe, ddim, strength)
        ours = _inpaint(sd_pipe, SDEScheduler.from_config(ddim, solver="ddim"), strength)
        assert (ours - ref).abs().max() <= 1e-5 * ref.abs().max()
    assert torch.isfinite(_inpaint(sd_pipe, SDEScheduler.from_config(ddim, solver="unipc"), 1.0)).all()
    with pytest.raises(RuntimeError, match="one evaluation per step"):
        _inpaint(sd_pipe, SDEScheduler.from_config(ddim, solver="heun"), 1.0)


def test_scheduler_refusals_and_errors(sd_pipe):
    cfg = sd_ddim()
    with pytest.raises(ValueError, match="adaptive"):
        SDEScheduler.from_config(cfg, solver="dpm_solver_adaptive")
    with pytest.raises(ValueError, match="forward"):
        SDEScheduler.from_config(cfg, solver="ddim_inverse")
    with pytest.raises(ValueError, match="unknown solver"):
        SDEScheduler.from_config(cfg, solver="nope")
    sch = SDEScheduler.from_config(cfg, solver="ddim")
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sch.step(torch.zeros(1, 4, 2, 2), 0, torch.zeros(1, 4, 2, 2))
    sch.set_timesteps(2)
    x = torch.zeros(1, 4, 2, 2)
    with pytest.raises(ValueError, match="in order"):
        sch.step(torch.zeros_like(x), sch.timesteps[1], x)
    sch.set_timesteps(2)
    for t in sch.timesteps:
        x = sch.step(torch.zeros_like(x), t, x).prev_sample
    with pytest.raises(RuntimeError, match="times for"):
        sch.step(torch.zeros_like(x), 0, x)
    with pytest.raises(ValueError, match="custom"):  # the pipeline's own check: no `sigmas` argument
        sd_pipe.scheduler = sch
        sd_pipe(PROMPT, height=16, width=16, sigmas=[1.0, 0.5], output_type="latent")


def test_config_round_trip_keeps_solver_and_reference(tmp_path):
    ref = diffusers.DPMSolverMultistepScheduler(timestep_spacing="trailing", beta_schedule="scaled_linear")
    opts = {"order": 3, "lower_order_final": False}
    sch = SDEScheduler.from_config(ref, solver="dpm_solver++", **opts)
    assert sch.solver.name == "dpm_solver++" and sch.config.solver_options == opts
    sch.save_config(tmp_path)
    back = SDEScheduler.from_pretrained(tmp_path)
    assert back.config.solver == "dpm_solver++" and back.config.solver_options == opts
    assert back.solver.options() == sch.solver.options()
    assert back.config.beta_schedule == "scaled_linear"
    back.set_timesteps(7)
    ref.set_timesteps(7)
    assert torch.equal(back.timesteps, ref.timesteps)
    # a new solver drops the old one's options
    assert SDEScheduler.from_config(back.config, solver="ddim").config.solver_options == {}


# ---------------------------------------------------------------------------------------------------------------------
# the agreement figures of docs/interop/diffusers.md:  python tests/test_interop_diffusers.py
# ---------------------------------------------------------------------------------------------------------------------


def agreement_table(tmp_path) -> list[tuple[str, str, float, float]]:
    """(pipeline, reference, max |output difference|, max |state difference| / max |state|) for every check above."""
    rows = []
    with default_float32():
        unet = tiny_unet2d()
        inputs: list = []
        unet.register_forward_hook(lambda mod, args, out: inputs.append(args[0].detach().clone()))
        pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler())
        pipe.set_progress_bar_config(disable=True)
        for name, make in REFERENCES.items():
            ref = make()
            img_ref, traj_ref = _run_ddpm(pipe, inputs, ref)
            img, traj = _run_ddpm(pipe, inputs, _ours_for(ref))
            rel = float((traj - traj_ref).abs().max() / traj_ref.abs().max())
            rows.append(("DDPMPipeline, 8 steps", name, float((img - img_ref).abs().max()), rel))
        sd = tiny_sd_pipeline(tmp_path)
        for kind in ("ddim", "dpm2m"):
            ref = sd_ddim() if kind == "ddim" else diffusers.DPMSolverMultistepScheduler.from_config(sd_ddim().config)
            lat_ref, lat = _run_sd(sd, ref), _run_sd(sd, _ours_for(ref))
            img_ref, img = _run_sd(sd, ref, output_type="pt"), _run_sd(sd, _ours_for(ref), output_type="pt")
            rel = float((lat - lat_ref).abs().max() / lat_ref.abs().max())
            rows.append(("StableDiffusionPipeline, 6 steps", kind, float((img - img_ref).abs().max()), rel))
        edits = [("Img2Img, strength 0.6", lambda s: _img2img(sd, s))]
        edits += [(f"Inpaint, strength {st}", lambda s, st=st: _inpaint(sd, s, st)) for st in (1.0, 0.6)]
        for name, run in edits:
            ddim = sd_ddim()
            ref, ours = run(ddim), run(SDEScheduler.from_config(ddim, solver="ddim"))
            rows.append((name, "ddim", float("nan"), float((ours - ref).abs().max() / ref.abs().max())))
    return rows


if __name__ == "__main__":
    import tempfile
    from pathlib import Path

    torch.set_num_threads(1)
    for pipeline, ref, out, state in agreement_table(Path(tempfile.mkdtemp())):
        print(f"{pipeline:34s} {ref:18s} max|image diff| {out:.2e}   max|state diff|/max|state| {state:.2e}")
