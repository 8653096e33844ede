"""DMMN nets: shapes, use of every view, gradients everywhere, width knob, input checks."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.nets.blocks import Upsampler, centre_crop, scaled_widths
from lightning_modules.nets.dmmn import ARCHS, build_dmmn

VARIANTS = [("s2", None), ("ms", None), ("m2s", None), ("m3", "release"), ("m3", "figure")]
IDS = [a + (f"-{r}" if r else "") for a, r in VARIANTS]
SIZE = 128  # smallest size every variant accepts (MS / M3 crop the 16x-pooled map by 4)


def _net(arch, wiring=None, width=0.125, classes=4):
    torch.manual_seed(0)
    return build_dmmn(arch, classes, width, m3_wiring=wiring or "release").eval()


def _views(batch=2, size=SIZE, seed=1):
    return torch.randn(batch, 3, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _conv(a, b, k=3):
    """A (transposed) conv k×k a→b: k·k·a·b weights + b biases."""
    return a * b * k * k + b


def _unet_body(f):
    """Parameters of one halved U-Net (encoder + decoder) with widths f, computed by hand."""
    enc = sum(_conv(a, b) + _conv(b, b) for a, b in zip([3, *f[:-1]], f, strict=True))
    dec = sum(_conv(f[i + 1], f[i]) + _conv(2 * f[i], f[i]) + _conv(f[i], f[i]) for i in range(4))
    return enc + dec


def _nparams(net):
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(("arch", "wiring"), VARIANTS, ids=IDS)
def test_output_shape_and_logits(arch, wiring):
    net = _net(arch, wiring)
    with torch.no_grad():
        y = net(_views())
    assert y.shape == (2, 4, SIZE, SIZE)
    assert torch.isfinite(y).all()
    assert y.std() > 0  # not a constant map


def test_s2_accepts_single_view_and_small_inputs():
    net = _net("s2")
    x = _views(size=64)
    with torch.no_grad():
        assert torch.equal(net(x[:, :1]), net(x))
    assert net.size_multiple == 16


@pytest.mark.parametrize(("arch", "wiring"), VARIANTS, ids=IDS)
@pytest.mark.parametrize("view", [1, 2], ids=["10x", "5x"])
def test_coarse_views_change_the_output_only_for_multi_mag(arch, wiring, view):
    net = _net(arch, wiring)
    x = _views()
    x2 = x.clone()
    x2[:, view] = torch.randn(x.shape[0], 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        diff = (net(x) - net(x2)).abs().max().item()
    if arch == "s2":
        assert diff == 0.0
    else:
        assert diff > 1e-4


@pytest.mark.parametrize(("arch", "wiring"), VARIANTS, ids=IDS)
@pytest.mark.parametrize("view", [1, 2], ids=["10x", "5x"])
def test_context_outside_the_20x_footprint_is_used(arch, wiring, view):
    """A band of the coarse view just outside the 20x field (which it covers at its centre
    1/2 or 1/4) changes the output of the multi-magnification nets: they see context."""
    net = _net(arch, wiring)
    x = _views()
    x2 = x.clone()
    edge = SIZE // 4 if view == 1 else SIZE * 3 // 8  # first row of the 20x footprint
    x2[:, view, :, edge - 8 : edge, :] += 3.0
    with torch.no_grad():
        diff = (net(x) - net(x2)).abs().max().item()
    assert (diff > 1e-4) == (arch != "s2")


@pytest.mark.parametrize(("arch", "wiring"), VARIANTS, ids=IDS)
def test_every_parameter_gets_a_gradient(arch, wiring):
    net = _net(arch, wiring).train()
    loss = torch.nn.functional.cross_entropy(net(_views()), torch.randint(0, 4, (2, SIZE, SIZE)))
    loss.backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without gradient (DDP would hang): {dead}"


def test_s2_param_count_matches_hand_count_at_any_width():
    for width in (1.0, 0.25):
        f = scaled_widths(width)
        expected = _unet_body(f) + _conv(f[0], f[0]) + _conv(f[0], 6, 1)
        assert _nparams(build_dmmn("s2", 6, width)) == expected


def test_width_multiplier_scales_params_quadratically_and_keeps_shape():
    assert scaled_widths(0.25) == (8, 16, 32, 64, 128)
    assert scaled_widths(0.01) == (1, 1, 1, 3, 5)
    for arch in ARCHS:
        full, quarter = _nparams(_net(arch, width=1.0)), _nparams(_net(arch, width=0.25))
        assert 1 / 17 < quarter / full < 1 / 15  # ~1/16: conv weights scale with width²
        assert len(list(_net(arch, width=1.0).modules())) == len(
            list(_net(arch, width=0.25).modules())
        )


def test_m3_release_matches_the_released_layer_list():
    """Released M3: 3 U-Nets; 20x up-convs take f4+f3+f2, f3+f2+f1, f2+f1+f0, f1+f0 channels."""
    f = scaled_widths(1.0)
    classes = 6
    ups20 = [(f[4] + f[3] + f[2], f[3]), (f[3] + f[2] + f[1], f[2])]
    ups20 += [(f[2] + f[1] + f[0], f[1]), (f[1] + f[0], f[0])]
    extra = sum(_conv(a, b) - _conv(a0, b) for (a, b), a0 in zip(ups20, f[4:0:-1], strict=True))
    expected = 3 * _unet_body(f) + extra + _conv(f[0], f[0]) + _conv(f[0], classes, 1)
    assert _nparams(build_dmmn("m3", classes)) == expected  # the default is the release
    assert _nparams(build_dmmn("m3", classes, m3_wiring="figure")) > expected  # + CONV_TR ups


def _hand_counts(c=4):
    """All five nets at width 1 for ``c`` classes, layer by layer: a conv or transposed conv
    k×k cin→cout has k·k·cin·cout + cout parameters (weights + biases)."""
    conv = _conv  # k*k*cin*cout + cout
    f = (32, 64, 128, 256, 512)
    enc = sum(conv(a, b) + conv(b, b) for a, b in zip((3, 32, 64, 128, 256), f, strict=True))

    def step(cin, out):  # UpStep: ConvTr(cin -> out), cat skip (out), two convs
        return conv(cin, out) + conv(2 * out, out) + conv(out, out)

    def dec(extra=(0, 0, 0, 0), depth=4):  # up step k goes from level 4-k to 3-k
        return sum(step(f[4 - k] + extra[k], f[3 - k]) for k in range(depth))

    def up(ch, factor):  # CONV_TR_2 = one ConvTr ch -> ch, CONV_TR_4 = two
        return {2: 1, 4: 2}[factor] * conv(ch, ch)

    head = conv(32, 32) + conv(32, c, 1)
    return {
        "s2": enc + dec() + head,
        "ms": 3 * enc + up(512, 2) + up(512, 4) + dec((1024, 0, 0, 0)) + head,
        "m2s": 3 * (enc + dec()) + up(32, 2) + up(32, 4) + conv(96, 32) + conv(32, c, 1),
        "m3-release": 3 * enc + 2 * dec() + dec((256 + 128, 128 + 64, 64 + 32, 32)) + head,
        "m3-figure": 3 * enc
        + 2 * dec(depth=3)
        + dec((1024, 512, 256, 128))
        + sum(up(ch, 2) + up(ch, 4) for ch in (512, 256, 128, 64))
        + head,
    }


def test_param_counts_at_width_1_match_hand_counts_and_docs():
    """The numbers in docs/dmmn.md (4 classes): hand counts == built nets == the table."""
    hand = _hand_counts(4)
    assert hand == {
        "s2": 8_639_844,
        "ms": 27_503_012,
        "m2s": 25_946_948,
        "m3-release": 27_071_204,
        "m3-figure": 38_345_060,
    }
    for (arch, wiring), name in zip(VARIANTS, IDS, strict=True):
        assert _nparams(_net(arch, wiring, width=1.0)) == hand[name], name


@pytest.mark.parametrize(
    ("arch", "wiring", "multiple"),
    [
        ("s2", None, 16),
        ("ms", None, 128),
        ("m2s", None, 16),
        ("m3", "figure", 128),
        ("m3", "release", 32),
    ],
)
def test_size_multiple(arch, wiring, multiple):
    net = _net(arch, wiring)
    assert net.size_multiple == multiple
    with pytest.raises(ValueError, match=f"divisible by {multiple}"):
        net(_views(size=multiple * 3 // 2))


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((2, 3, 3, 128), "expects a"),
        ((2, 2, 3, 128, 128), "3 views"),
        ((2, 3, 4, 128, 128), "3 channels"),
        ((2, 3, 3, 128, 80), "divisible by 32"),
    ],
)
def test_bad_input_raises_clear_value_error(shape, message):
    with pytest.raises(ValueError, match=message):
        _net("m3")(torch.zeros(shape))


def test_bad_input_types_and_builder_arguments():
    with pytest.raises(ValueError, match="floating-point"):
        _net("s2")(torch.zeros(1, 3, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="unknown DMMN arch"):
        build_dmmn("m4", 4)
    with pytest.raises(ValueError, match="m3_wiring must be one of"):
        build_dmmn("m3", 4, m3_wiring="paper")
    with pytest.raises(ValueError, match="width"):
        build_dmmn("s2", 4, width=0)


def test_centre_crop_takes_the_central_footprint():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert centre_crop(x, 2).flatten().tolist() == [5.0, 6.0, 9.0, 10.0]
    big = torch.zeros(1, 1, 16, 16)
    big[..., 6:10, 6:10] = 1
    assert centre_crop(big, 4).min() == 1 and centre_crop(big, 4).shape[-1] == 4
    with pytest.raises(ValueError, match="whole pixels"):
        centre_crop(torch.zeros(1, 1, 4, 4), 4)  # the centre quarter would start at 1.5


def test_upsampler_is_conv_tr_k():
    assert len(Upsampler(8, 4)) == 2 and len(Upsampler(8, 2)) == 1
    assert Upsampler(8, 4)(torch.zeros(1, 8, 5, 7)).shape == (1, 8, 20, 28)
    with pytest.raises(ValueError):
        Upsampler(8, 3)


@pytest.mark.parametrize(("arch", "wiring"), VARIANTS, ids=IDS)
def test_full_width_256_shapes(arch, wiring):
    net = _net(arch, wiring, width=1.0, classes=6)
    with torch.no_grad():
        assert net(_views(batch=1, size=256)).shape == (1, 6, 256, 256)


def test_task_wiring_default_and_old_checkpoint_boolean():
    """`DMMN` builds the release wiring by default; the boolean of pre-issue-12 checkpoints'
    hparams (`literal_release`) still decides the wiring they were trained with."""
    from lightning_modules.dmmn import DMMN

    def wiring(**kw):
        return DMMN(arch="m3", width=0.0625, num_overlays=0, **kw).net.m3_wiring

    assert wiring() == "release"
    assert wiring(m3_wiring="figure") == "figure"
    assert wiring(literal_release=False) == "figure"  # the old default
    assert wiring(literal_release=True, m3_wiring="figure") == "release"
