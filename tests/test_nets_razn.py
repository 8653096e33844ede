"""RAZN's networks: output stride 8 by dilation, the light policy and its cost, tiles, weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from datamodules.errors import InputError
from lightning_modules.nets.razn import (
    DilatedResNet18,
    FCNSegmenter,
    PolicyNet,
    conv_macs,
    from_tiles,
    load_pretrained,
    policy_cost_ratio,
    to_tiles,
    zoom_pyramid,
)


def test_segmenter_output_stride_8_by_dilation():
    net = FCNSegmenter(4, width=0.125).eval()
    with torch.no_grad():
        assert net(torch.zeros(2, 3, 64, 96)).shape == (2, 4, 8, 12)
        logits, feats = net(torch.zeros(1, 3, 64, 64), return_features=True)
    assert feats.shape == (1, net.feature_channels, 8, 8) and logits.shape == (1, 4, 8, 8)
    enc = net.encoder
    # the last two stages keep the resolution: no stride, dilation 2 and 4 instead
    for layer, dilations in ((enc.layer3, (1, 2)), (enc.layer4, (2, 4))):
        assert [b.conv1.stride for b in layer] == [(1, 1), (1, 1)]
        assert [b.conv2.dilation[0] for b in layer] == list(dilations)
    assert enc.layer2[0].conv1.stride == (2, 2)


def test_policy_is_one_probability_per_field_starting_at_one_half():
    net = PolicyNet(width=0.125)
    assert net(torch.randn(3, 3, 64, 64)).shape == (3,)
    assert torch.sigmoid(net(torch.randn(2, 3, 64, 64))).eq(0.5).all()  # no initial preference
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5  # stem + one conv3x3 per stage (ResNet-18 has 2 blocks x 2 convs)
    assert [c.stride[0] for c in convs[1:]] == [1, 2, 2, 2]


def test_conv_macs_counts_a_known_layer():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 100, 5))
    assert conv_macs(conv, (10, 10)) == 8 * 100 * 27 + 5 * 800


def test_policy_costs_a_few_percent_of_a_segmenter():
    # the paper reports ~7.1 %; ours counts conv/linear MACs at 256²: 4.21 % (docs/razn.md)
    seg = conv_macs(FCNSegmenter(4, 1.0), (256, 256))
    policy = conv_macs(PolicyNet(1.0), (256, 256))
    assert (seg, policy) == (12_636_913_664, 531_628_544)  # dilated ResNet-18 + FCN: ~7x 1.8 G
    assert policy_cost_ratio(4, width=1.0, size=256) == pytest.approx(0.042070, abs=1e-6)
    assert policy_cost_ratio(4, width=0.25, size=256) == pytest.approx(0.075877, abs=1e-6)


def test_tiles_round_trip_and_order():
    x = torch.arange(2 * 1 * 4 * 4).float().reshape(2, 1, 4, 4)
    t = to_tiles(x, 2)
    assert t.shape == (8, 1, 2, 2)
    assert torch.equal(t[1], x[0, :, :2, 2:]) and torch.equal(t[6], x[1, :, 2:, :2])
    assert torch.equal(from_tiles(t, 2), x)
    assert to_tiles(x, 1) is x
    with pytest.raises(ValueError, match="does not split"):
        to_tiles(torch.zeros(1, 1, 5, 5), 2)


def test_zoom_pyramid_is_a_quadtree():
    """Level-2 node j·4 + c must lie inside level-1 node j (children stay contiguous)."""
    b, h = 2, 4
    ys, xs = torch.meshgrid(torch.arange(4 * h), torch.arange(4 * h), indexing="ij")
    where = (ys * 100 + xs).float()  # each 20x pixel knows its position
    batch = {
        "image": torch.zeros(b, 3, h, h),
        "label": torch.zeros(b, h, h, dtype=torch.long),
        "zoom1": torch.zeros(b, 3, 2 * h, 2 * h),
        "zoom1_label": (ys[::2, ::2] // (2 * h) * 2 + xs[::2, ::2] // (2 * h)).expand(b, -1, -1),
        "zoom2": where.expand(b, 3, -1, -1),
        "zoom2_label": torch.zeros(b, 4 * h, 4 * h, dtype=torch.long),
    }
    images, labels, q = zoom_pyramid(batch, 2)
    assert q == [1, 2, 2]
    assert images[1].shape == (b * 4, 3, h, h) and images[2].shape == (b * 16, 3, h, h)
    assert torch.equal(labels[1][:4, 0, 0], torch.arange(4))  # row-major quarters
    for j in range(4):  # field 0's level-1 tiles
        r0, c0 = divmod(j, 2)
        for c in range(4):
            tile = images[2][j * 4 + c, 0]
            rows, cols = tile // 100, tile % 100
            assert rows.min() >= r0 * 2 * h and rows.max() < (r0 + 1) * 2 * h
            assert cols.min() >= c0 * 2 * h and cols.max() < (c0 + 1) * 2 * h
    with pytest.raises(InputError, match="zoom3"):
        zoom_pyramid(batch, 3)


def test_torchvision_resnet18_weights_load(tmp_path):
    tv = pytest.importorskip("torchvision")
    ref = tv.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    segs = nn.ModuleList([FCNSegmenter(4, 1.0), FCNSegmenter(4, 1.0)])
    load_pretrained(segs, str(path))
    for seg in segs:
        assert torch.equal(seg.encoder.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
        assert torch.equal(seg.encoder.bn1.running_var, ref.bn1.running_var)
    with pytest.raises(InputError, match="width 1.0"):
        load_pretrained(nn.ModuleList([FCNSegmenter(4, 0.5)]), str(path))
    with pytest.raises(InputError, match="no such"):
        load_pretrained(segs, str(tmp_path / "missing.pth"))


def test_imagenet_is_refused_offline():
    with pytest.raises(InputError, match="never downloads"):
        load_pretrained(nn.ModuleList([FCNSegmenter(2, 0.125)]), "imagenet")


def test_width_must_be_positive():
    with pytest.raises(InputError, match="width"):
        DilatedResNet18(width=0)
