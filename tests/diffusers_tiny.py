"""Tiny randomly initialised diffusers components built from configs (no downloads), shared by the interop and
latent-diffusion tests. Importing this module needs diffusers; the text encoder needs transformers."""

from __future__ import annotations

import contextlib
import json

import diffusers
import pytest
import torch


@contextlib.contextmanager
def default_float32():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)  # diffusers' pipelines run in float32 (the suite's default is float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def tiny_unet2d(**kw):
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        **kw,
    ).eval()


def tiny_clip(tmp_path):
    transformers = pytest.importorskip("transformers")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tok = transformers.CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=8)
    config = transformers.CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=8,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=16,
    )
    return tok, transformers.CLIPTextModel(config).eval()


def sd_ddim():
    """Stable Diffusion's scheduler settings (scaled_linear betas, steps_offset 1, no alpha_0 = 1)."""
    return diffusers.DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def tiny_vae(**kw):
    """An ``AutoencoderKL`` with one block (no downsampling): 3 channels <-> 4 latent channels."""
    return diffusers.AutoencoderKL(
        block_out_channels=(8,),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=8,
        **kw,
    ).eval()


def tiny_sd_pipeline(tmp_path):
    tok, text_encoder = tiny_clip(tmp_path)
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=4,
        attention_head_dim=2,
    ).eval()
    vae = tiny_vae()
    sched = sd_ddim()
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
