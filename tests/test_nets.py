"""Score networks: shapes, dtypes, time dependence, no mixing across the batch, gradients, rebuilding."""

import math

import pytest
import torch

from sde_diffusion import Model, VPLinear
from sde_diffusion.training.nets import NETS, FourierTimeEmbedding, MLPScoreNet, UNet, build_net


def randomise(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter (including the zero-initialised ones) a random value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


def test_fourier_embedding():
    t = torch.tensor([0.0, 0.25, 1.0])
    emb = FourierTimeEmbedding(8, "random", scale=3.0, seed=5)
    out = emb(t)
    assert out.shape == (3, 8)
    w = emb.freqs.double()
    want = torch.cat([torch.sin(2 * math.pi * t[:, None] * w), torch.cos(2 * math.pi * t[:, None] * w)], 1)
    torch.testing.assert_close(out.double(), want, rtol=0, atol=1e-6)
    torch.testing.assert_close(FourierTimeEmbedding(8, "random", scale=3.0, seed=5).freqs, emb.freqs)
    assert not torch.equal(FourierTimeEmbedding(8, "random", scale=3.0, seed=6).freqs, emb.freqs)
    fixed = FourierTimeEmbedding(6, "fixed", min_freq=1.0, max_freq=100.0).freqs
    torch.testing.assert_close(fixed.double(), torch.tensor([1.0, 10.0, 100.0]), rtol=1e-6, atol=0)
    assert "freqs" in emb.state_dict()
    with pytest.raises(ValueError):
        FourierTimeEmbedding(7)
    with pytest.raises(ValueError):
        FourierTimeEmbedding(8, "nope")


@pytest.mark.parametrize("fourier", ["random", "fixed"])
def test_mlp_shapes_dtypes_and_batch_independence(fourier):
    torch.manual_seed(0)
    net = MLPScoreNet(dim=6, hidden=32, depth=2, embed_dim=16, fourier=fourier).float()
    x = torch.randn(5, 2, 3, dtype=torch.float32)
    t = torch.rand(5, dtype=torch.float32)
    out = net(x, t)
    assert out.shape == x.shape and out.dtype == torch.float32
    rows = torch.cat([net(x[i : i + 1], t[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(out, rows)
    # float64 input to a float32 network: computed in float32, returned in float64
    out64 = net(x.double(), t.double())
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), out)
    # a float64 network
    net64 = MLPScoreNet(dim=6, hidden=32, depth=2, embed_dim=16, fourier=fourier).double()
    assert net64(x.double(), t.double()).dtype == torch.float64
    # time dependence and scalar time
    assert not torch.allclose(net(x, torch.zeros(5)), net(x, torch.ones(5)))
    torch.testing.assert_close(net(x, torch.tensor(0.3)), net(x, torch.full((5,), 0.3)))
    with pytest.raises(ValueError):
        net(torch.randn(5, 4), t)
    with pytest.raises(ValueError):
        net(x, torch.rand(4))


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "score"])
def test_networks_work_as_any_parametrisation(prediction):
    torch.manual_seed(1)
    net = MLPScoreNet(dim=2, hidden=16, depth=1, embed_dim=8)
    model = Model(net, VPLinear(), prediction)
    x = torch.randn(4, 2)
    t = torch.full((4,), 0.5)
    eps = model.eps(x, t)
    x0 = model.x0(x, t)
    a, s = VPLinear().alpha(0.5), VPLinear().sigma(0.5)
    torch.testing.assert_close(a * x0 + s * eps, x)


CONFIGS = {
    "16x16": (dict(in_channels=1, base_channels=16, channel_mults=(1, 2), num_res_blocks=1), (3, 1, 16, 16)),
    "32x32": (
        dict(in_channels=3, base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1, attn_heads=2, fourier="random"),
        (2, 3, 32, 32),
    ),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_unet(name):
    cfg, shape = CONFIGS[name]
    torch.manual_seed(0)
    net = UNet(**cfg).float()
    x = torch.randn(shape, dtype=torch.float32)
    t = torch.rand(shape[0], dtype=torch.float32)
    out = net(x, t).detach()
    assert out.shape == x.shape
    assert float(out.abs().max()) == 0.0  # zero-initialised output convolution
    randomise(net)
    out = net(x, t).detach()
    assert float(out.abs().max()) > 0
    # each sample is processed on its own (GroupNorm and attention are per sample)
    rows = torch.cat([net(x[i : i + 1], t[i : i + 1]) for i in range(shape[0])])
    torch.testing.assert_close(out, rows, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(net(x, torch.zeros_like(t)), net(x, torch.ones_like(t)))
    # gradients reach every parameter
    net.zero_grad()
    net(x, t).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or float(p.grad.abs().max()) == 0]
    assert not missing
    # rebuilding from the recorded config gives the same architecture and function
    again = build_net("UNet", net.config).float()
    again.load_state_dict(net.state_dict())
    torch.testing.assert_close(again(x, t), net(x, t))
    # float64 works too
    assert net.double()(x.double(), t.double()).dtype == torch.float64


def test_unet_attention_is_used_and_shape_checks():
    cfg, shape = CONFIGS["16x16"]
    torch.manual_seed(0)
    net = randomise(UNet(**cfg).float())
    x = torch.randn(shape, dtype=torch.float32)
    t = torch.rand(shape[0], dtype=torch.float32)
    out = net(x, t)
    with torch.no_grad():
        net.attn.proj.weight.zero_()
        net.attn.proj.bias.zero_()
    assert not torch.allclose(net(x, t), out)
    with pytest.raises(ValueError):
        net(torch.randn(2, 1, 15, 15), torch.rand(2))
    with pytest.raises(ValueError):
        net(torch.randn(2, 16, 16), torch.rand(2))


def test_build_net_registry():
    assert set(NETS) == {"MLPScoreNet", "UNet"}
    net = MLPScoreNet(dim=3, hidden=8, depth=1, embed_dim=4, seed=3)
    again = build_net("MLPScoreNet", net.config)
    assert again.config == net.config
    torch.testing.assert_close(again.time.freqs, net.time.freqs)
    with pytest.raises(ValueError):
        build_net("Nope", {})


def test_autocast_on_cpu():
    """Under torch.autocast the networks run in the autocast dtype and return the input's dtype."""
    torch.manual_seed(0)
    mlp = MLPScoreNet(dim=2, hidden=16, depth=1, embed_dim=8).float()
    unet = randomise(UNet(**CONFIGS["16x16"][0]).float())
    cases = ((mlp, torch.randn(4, 2, dtype=torch.float32)), (unet, torch.randn(2, 1, 16, 16, dtype=torch.float32)))
    for net, x in cases:
        t = torch.rand(x.shape[0], dtype=torch.float32)
        with torch.no_grad():
            ref = net(x, t)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x, t)
        assert out.dtype == torch.float32
        # bfloat16 keeps ~3 significant digits
        assert float((out - ref).abs().max()) < 0.05 * float(ref.abs().max()) + 1e-3
