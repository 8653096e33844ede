"""RefineNet / DA-RefineNet nets, encoder weights and the DARefineNet task's loss and optimizer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from datamodules.errors import InputError
from lightning_modules.da_refinenet import DARefineNet, NLLLoss
from lightning_modules.nets.encoders import RESNET_CHANNELS, ResNetEncoder, build_encoder
from lightning_modules.nets.refinenet import (
    CRP,
    FUSIONS,
    RCU,
    DualRefineNet,
    RefineNet,
    build_refinenet,
)
from lightning_modules.nets.weights import load_encoder_weights, resolve_encoder_weights

SMALL = {"slice_encoder": "resnet18", "full_encoder": "resnet18", "width": 0.125, "rcu_blocks": 1}


def dual(fusion: str, aligned: bool = False, **kw) -> DualRefineNet:
    torch.manual_seed(0)
    return build_refinenet("dual", 4, fusion=fusion, aligned=aligned, **{**SMALL, **kw})


def test_single_refinenet_shapes_and_widths():
    torch.manual_seed(0)
    net = build_refinenet("single", 3, slice_encoder="resnet18")
    assert isinstance(net, RefineNet)
    out = net(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, 3, 16, 24)  # stride 4
    # paper widths: 512 at the deepest level, 256 elsewhere; no batch norm in the decoder
    widths = [level.slice_path[0].out_channels for level in net.decoder.levels]
    assert widths == [512, 256, 256, 256]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.decoder.modules())
    with pytest.raises(ValueError, match="SingleView"):
        net(torch.randn(1, 2, 3, 64, 64))


def test_resnet50_encoder_gives_four_levels():
    """(ResNet-101/152 share its channels; they are built in tests/test_da_refinenet_cli.py.)"""
    encoder = "resnet50"
    enc = ResNetEncoder(encoder).eval()
    with torch.no_grad():
        feats = enc(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == list(RESNET_CHANNELS[encoder])
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_each_fusion_runs_uses_the_full_image_and_trains_both_encoders(fusion, aligned):
    net = dual(fusion, aligned).eval()
    x = torch.randn(2, 2, 3, 64, 64)
    y = x.clone()
    y[:, 1] = torch.randn(2, 3, 64, 64)  # same slices, other full images
    with torch.no_grad():
        a, b, again = net(x), net(y), net(x.clone())
    assert a.shape == (2, 4, 16, 16)  # stride 4
    assert torch.equal(a, again)
    assert (a - b).abs().max() > 1e-4  # the full image changes the output
    net.train()
    net(x).square().mean().backward()
    for enc in net.encoders():
        grads = [p.grad for p in enc.parameters() if p.requires_grad]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    with pytest.raises(ValueError, match="views.dual"):
        net(torch.randn(2, 3, 64, 64))


def test_fusion_rules():
    """add, concat and attention compute what the paper says, given fixed weights."""
    s, up, f = (torch.randn(2, 8, 4, 4) for _ in range(3))
    net = dual("attention")
    level = net.decoder.levels[1]
    fuse = level.fuse
    fuse.fc1.weight.data.zero_()
    fuse.fc1.bias.data.zero_()
    fuse.fc2.weight.data.zero_()
    fuse.fc2.bias.data.fill_(0.0)  # w = sigmoid(0) = 0.5 everywhere
    c = s.shape[1]
    big = [t.repeat(1, level.slice_path[0].out_channels // c, 1, 1) for t in (s, up, f)]
    assert torch.allclose(fuse(*big), big[1] + 0.5 * big[0])
    add = dual("add").decoder.levels[1].fuse
    assert torch.allclose(add(*big), big[0] + big[1] + big[2])
    concat = dual("concat").decoder.levels[1].fuse
    assert concat.proj.in_channels == 3 * concat.proj.out_channels
    with torch.no_grad():
        assert torch.allclose(concat(*big), concat.proj(torch.cat(big, 1)), atol=1e-6)
        by_hand = F.conv2d(torch.cat(big, 1), concat.proj.weight, concat.proj.bias)
        assert torch.allclose(concat(*big), by_hand, atol=1e-6)
        # attention with its random initial weights, by hand: w = σ(fc2(ReLU(fc1(GAP(cat)))))
        fuse = dual("attention").decoder.levels[1].fuse
        pooled = torch.cat(big, 1).mean((2, 3), keepdim=True)
        hidden = F.relu(F.conv2d(pooled, fuse.fc1.weight, fuse.fc1.bias))
        w = torch.sigmoid(F.conv2d(hidden, fuse.fc2.weight, fuse.fc2.bias))
        assert w.std() > 0.01  # really per-channel weights, not a constant
        assert torch.allclose(fuse(*big), big[1] + big[0] * w, atol=1e-6)
        # the deepest level (no `up`): the full image's features take its place
        deep = dual("attention").decoder.levels[0].fuse
        s0, f0 = (torch.randn(2, deep.fc2.out_channels, 2, 2) for _ in range(2))
        pooled = torch.cat([s0, f0], 1).mean((2, 3), keepdim=True)
        hidden = F.relu(F.conv2d(pooled, deep.fc1.weight, deep.fc1.bias))
        w0 = torch.sigmoid(F.conv2d(hidden, deep.fc2.weight, deep.fc2.bias))
        assert torch.allclose(deep(s0, None, f0), f0 + s0 * w0, atol=1e-6)


def test_full_image_changes_the_attention_weights_at_every_level():
    """Not only the additive path of the deepest level: the channel weights w of the three
    finer levels (where out = up + s·w and f enters through w alone) depend on the full image."""
    net = dual("attention").eval()
    pre_sigmoid: dict[int, list[torch.Tensor]] = {1: [], 2: [], 3: []}
    for k in pre_sigmoid:
        net.decoder.levels[k].fuse.fc2.register_forward_hook(
            lambda _m, _i, out, k=k: pre_sigmoid[k].append(out.detach())
        )
    x = torch.randn(2, 2, 3, 64, 64)
    y = x.clone()
    y[:, 1] = torch.randn(2, 3, 64, 64)  # same slices, other full images
    with torch.no_grad():
        net(x), net(y)
    for k, (wx, wy) in pre_sigmoid.items():
        assert (torch.sigmoid(wx) - torch.sigmoid(wy)).abs().max() > 1e-4, k


def test_rcu_and_crp_blocks():
    rcu = RCU(8)
    for conv in (rcu.conv1, rcu.conv2):
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
    x = torch.randn(1, 8, 6, 6)
    assert torch.equal(rcu(x), x)  # residual
    crp = CRP(8)
    assert len(crp.convs) == 4 and crp.pool.kernel_size == 5 and crp.pool.stride == 1
    for conv in crp.convs:
        nn.init.dirac_(conv.weight)  # identity 1×1: output = relu(x) + Σ of 1..4 max-pools
    x = torch.zeros(1, 8, 9, 9)
    x[0, :, 4, 4] = 1.0
    out = crp(x)
    assert out[0, 0, 4, 4] == 5.0  # the peak plus four pooled copies
    # the corner (Chebyshev distance 4) is reached from the 2nd pooling on (radius 2 each)
    assert out[0, 0, 0, 0] == 3.0
    assert out[0, 0, 4, 2] == 4.0  # distance 2: reached by every pooling, not by relu(x)


def test_aligned_crop_takes_the_slice_footprint():
    net = dual("add", aligned=True, context=4.0)
    xs = torch.arange(16.0).view(1, 1, 1, 16).expand(1, 1, 16, 16)  # value = column index
    crop = net.align(xs, (8, 8))
    # the centre quarter of a 16-wide map spans [6, 10) in continuous coordinates; 8 samples
    # at 6.25, 6.75, ..., 9.75 read pixel indices 5.75 ... 9.25 (pixel j is centred at j + 0.5)
    assert crop.shape == (1, 1, 8, 8)
    assert torch.allclose(crop[0, 0], torch.linspace(5.75, 9.25, 8).expand(8, 8))


def test_bad_names_are_input_errors():
    with pytest.raises(InputError, match="fusion"):
        build_refinenet("dual", 4, fusion="mean", **{k: v for k, v in SMALL.items()})
    with pytest.raises(InputError, match="arch"):
        build_refinenet("triple", 4)
    with pytest.raises(InputError, match="resnet"):
        build_encoder("vgg16")


# ---------------------------------------------------------------------------- weights
def test_encoder_weights_specs(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert resolve_encoder_weights(None, "resnet18") is None
    assert resolve_encoder_weights("null", "resnet18") is None
    with pytest.raises(InputError) as err:
        build_encoder("resnet18", "imagenet")
    text = str(err.value)
    assert "never downloads" in text and "resnet18-f37072fd.pth" in text
    assert "--model.init_args.encoder_weights" in text and "null" in text
    with pytest.raises(InputError, match="no such weights file"):
        build_encoder("resnet18", str(tmp_path / "missing.pth"))


def test_imagenet_from_the_torch_cache_and_local_paths(tmp_path, monkeypatch):
    """A torchvision-format file (with its fc classifier) in the hub cache or at a path loads."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None).state_dict()
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference, cache / "resnet18-f37072fd.pth")
    enc = build_encoder("resnet18", "imagenet")
    assert torch.equal(enc.layer3[0].conv1.weight, reference["layer3.0.conv1.weight"])
    # a wrapped checkpoint with a prefix, at a path
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.items()}}, wrapped)
    enc = build_encoder("resnet18", str(wrapped))
    assert torch.equal(enc.bn1.running_var, reference["bn1.running_var"])
    # a file for another net is refused, not half-loaded
    other = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), other)
    with pytest.raises(InputError, match="does not fit.*it does not have"):
        load_encoder_weights(ResNetEncoder("resnet18"), other)  # every r18 key is in r34
    with pytest.raises(InputError, match="does not fit.*missing"):
        load_encoder_weights(ResNetEncoder("resnet34"), cache / "resnet18-f37072fd.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read weights"):
        build_encoder("resnet18", str(junk))


# ------------------------------------------------------------------------------ task
def test_nll_loss_is_cross_entropy():
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    target = torch.randint(0, 4, (2, 8, 8))
    target[0, :3] = 255
    loss = NLLLoss()(logits, target)
    assert torch.allclose(loss, F.cross_entropy(logits, target, ignore_index=255))
    empty = NLLLoss()(logits, torch.full((2, 8, 8), 255))
    empty.backward()  # all ignored: a zero that still backpropagates
    assert empty.item() == 0.0 and logits.grad is not None


def test_task_parameter_groups_and_optimizers():
    task = DARefineNet(**SMALL, fusion="concat", lr=5e-3, encoder_lr=5e-4)
    groups = task.parameter_groups()
    enc, dec = groups
    assert (enc["lr"], dec["lr"]) == (5e-4, 5e-3)
    n_enc = sum(p.numel() for e in task.net.encoders() for p in e.parameters())
    assert sum(p.numel() for p in enc["params"]) == n_enc
    assert sum(p.numel() for g in groups for p in g["params"]) == task.parameter_count
    sgd = task.configure_optimizers()
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9
    assert isinstance(task.criterion, NLLLoss)
    with pytest.raises(InputError, match="optimizer"):
        DARefineNet(**SMALL, optimizer="rmsprop")
    adam = DARefineNet(**SMALL, arch="single", optimizer="adam", encoder_lr=None)
    opt = adam.configure_optimizers()
    assert isinstance(opt, torch.optim.Adam)
    assert [g["lr"] for g in opt.param_groups] == [5e-3, 5e-3]
