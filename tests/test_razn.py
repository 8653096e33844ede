"""RAZN's training and inference (Algorithm 1), its baselines, the timing callback and the
merged-group IoU, on in-memory batches (the CLI runs are in test_razn_cli.py)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from datamodules.errors import InputError
from datamodules.labels.classmaps import load_class_map
from lightning_modules.callbacks.timing import RelativeInferenceTime
from lightning_modules.metrics import group_iou, scores
from lightning_modules.nets.razn import from_tiles, images_only, to_tiles, zoom_pyramid
from lightning_modules.razn import RAZN
from lightning_modules.razn_baselines import AttentionToScale, MultiScaleMax, Scale1, Scale2
from lightning_modules.razn_policy import zoom_rewards

H = 16  # x0 side; zoomed fields are 2H


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny nets on a shared 2-core machine: a second intra-op thread only adds spin-waiting
    (measured ~10x slower per step under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class ToyFields(Dataset):
    """Two kinds of fields of one class each (0 or 1):

    - "zoom helps": x0 is plain grey, the class shows only in the zoomed tiles (dark / bright);
    - "zoom hurts": x0 is dark / bright, the zoomed tiles are plain grey.
    """

    def __init__(self, n: int = 64, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.kind = np.arange(n) % 2  # 0 = zoom helps, 1 = zoom hurts
        self.cls = rng.integers(0, 2, n)
        self.rng = rng

    def __len__(self) -> int:
        return len(self.kind)

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        tone = 40.0 + 175.0 * float(self.cls[i])
        x0 = torch.full((3, H, H), 128.0 if self.kind[i] == 0 else tone)
        x1 = torch.full((3, 2 * H, 2 * H), tone if self.kind[i] == 0 else 128.0)
        x0 += 8 * torch.randn(x0.shape, generator=g)
        x1 += 8 * torch.randn(x1.shape, generator=g)
        c = int(self.cls[i])
        return {
            "image": x0.clamp(0, 255).to(torch.uint8),
            "label": torch.full((H, H), c, dtype=torch.long),
            "zoom1": x1.clamp(0, 255).to(torch.uint8),
            "zoom1_label": torch.full((2 * H, 2 * H), c, dtype=torch.long),
        }


def trainer(**kw) -> pl.Trainer:
    defaults = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_val_batches": 0,
        "num_sanity_val_steps": 0,
    }
    return pl.Trainer(**{**defaults, **kw})


def zoom_prob(model: RAZN, data: ToyFields) -> tuple[float, float]:
    """Mean policy probability on the two kinds of fields."""
    batch = next(iter(DataLoader(data, batch_size=len(data))))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        p = torch.sigmoid(model.policies[0](model.normalize(batch["image"])))
    model.train(was_training)
    kind = torch.as_tensor(data.kind)
    return float(p[kind == 0].mean()), float(p[kind == 1].mean())


def toy_razn(**kw) -> RAZN:
    return RAZN(num_classes=2, class_map=None, width=0.0625, num_overlays=0, **kw)


@pytest.mark.parametrize("literal", [False, True])
def test_policy_learns_where_zooming_pays(literal):
    """The intended reward raises p where zooming lowers the loss and lowers it elsewhere; the
    printed (literal) sign learns the opposite — why it is off by default."""
    torch.manual_seed(0)
    data = ToyFields()
    model = toy_razn(literal_reward=literal)
    helps, hurts = zoom_prob(model, data)
    assert helps == hurts == 0.5
    trainer(max_epochs=12).fit(model, DataLoader(data, batch_size=8, shuffle=True))
    helps, hurts = zoom_prob(model, data)
    if literal:  # it learns to zoom where zooming hurts, and not where it helps
        assert hurts > 0.9 and helps < 0.6, (helps, hurts)
    else:
        assert helps > 0.8 and hurts < 0.2, (helps, hurts)
        # inference zooms exactly where it pays, and gets the class right there
        batch = next(iter(DataLoader(data, batch_size=len(data))))
        pred = model.batch_logits(batch).argmax(1)
        zoomed = model._decisions[0]
        kind = torch.as_tensor(data.kind)
        assert zoomed[kind == 0].float().mean() > 0.9 and zoomed[kind == 1].float().mean() < 0.1
        assert (pred == batch["label"]).float().mean() > 0.9


def test_reward_sign_and_normalisation():
    j0 = torch.tensor([1.0, 1.0, 2.0])
    j1_tiles = torch.tensor([0.5] * 4 + [2.0] * 4 + [1.0] * 4)  # mean J1 per field: .5, 2, 1
    frac = [torch.ones(3), torch.ones(12)]
    a = torch.tensor([1.0, 1.0, 0.0])
    r, final_j, _ = zoom_rewards([j0, j1_tiles], frac, [a], [1, 2])
    assert torch.allclose(r[0], torch.tensor([0.5, -1.0, 0.0]))  # (J0 - J1) / J0, a = 0 -> 0
    assert torch.allclose(final_j, torch.tensor([0.5, 2.0, 2.0]))  # the composition's loss
    lit, _, _ = zoom_rewards([j0, j1_tiles], frac, [a], [1, 2], literal=True)
    assert torch.allclose(lit[0], -r[0])
    cost, _, _ = zoom_rewards([j0, j1_tiles], frac, [a], [1, 2], zoom_cost=0.25)
    assert torch.allclose(cost[0], torch.tensor([0.25, -1.25, 0.0]))
    tiny = [torch.tensor([1e-9]), torch.full((4,), 3.0)]
    clipped, _, _ = zoom_rewards(tiny, [torch.ones(1), torch.ones(4)], [torch.ones(1)], [1, 2])
    assert clipped[0].item() == -5.0


@pytest.mark.parametrize("zoom", [True, False])
def test_only_the_chosen_segmenter_steps_but_all_get_gradients(zoom):
    torch.manual_seed(0)
    model = toy_razn(alpha=1.0)  # p̃ = p: a policy sure of itself acts deterministically
    nn.init.constant_(model.policies[0].fc.bias, 30.0 if zoom else -30.0)
    before = [[p.detach().clone() for p in s.parameters()] for s in model.segmenters]
    buffers = [{n: b.clone() for n, b in s.named_buffers()} for s in model.segmenters]
    grads = {}

    class Grab(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            grads.update({n: p.grad for n, p in pl_module.named_parameters()})

    data = ToyFields(8)
    trainer(max_steps=1, callbacks=[Grab()]).fit(model, DataLoader(data, batch_size=8))
    assert all(g is not None for g in grads.values())  # DDP: every parameter in the backward
    moved = [
        any(not torch.equal(a, b) for a, b in zip(old, s.parameters(), strict=True))
        for old, s in zip(before, model.segmenters, strict=True)
    ]
    assert moved == ([False, True] if zoom else [True, False])
    # BatchNorm running statistics (and batch counters) move only in the chosen segmenter: the
    # other one ran for the reward only
    changed = [
        sorted(n for n, b in s.named_buffers() if not torch.equal(b, old[n]))
        for old, s in zip(buffers, model.segmenters, strict=True)
    ]
    chosen, other = (1, 0) if zoom else (0, 1)
    assert changed[other] == []
    assert {"encoder.bn1.running_mean", "encoder.bn1.num_batches_tracked"} <= set(changed[chosen])
    assert model.segmenters[other].training  # back in train mode after the step


def test_inference_follows_the_policy():
    torch.manual_seed(0)
    model = toy_razn().eval()
    batch = next(iter(DataLoader(ToyFields(4), batch_size=4)))

    def up(x, side):
        return nn.functional.interpolate(x, size=(side, side), mode="bilinear")

    with torch.no_grad():
        nn.init.constant_(model.policies[0].fc.bias, -5.0)
        f0 = model.segmenters[0](model.normalize(batch["image"]))  # (4, 2, H/8, H/8)
        # unzoomed fields: f_θ0 brought to the zoomed grid (2x finer), then to the labels
        assert torch.allclose(model.batch_logits(batch), up(up(f0, H // 4), H), atol=1e-5)
        assert not model._decisions[0].any()
        nn.init.constant_(model.policies[0].fc.bias, 5.0)
        out = model.batch_logits(batch)
        tiles = model.segmenters[1](model.normalize(to_tiles(batch["zoom1"], 2)))
        assert model._decisions[0].all()
        assert torch.allclose(out, up(from_tiles(tiles, 2), H), atol=1e-5)


def test_recursive_zoom_trains_and_infers():
    torch.manual_seed(0)
    model = RAZN(num_classes=2, class_map=None, width=0.0625, levels=2, num_overlays=0)
    assert len(model.segmenters) == 3 and len(model.policies) == 2

    class Deep(ToyFields):
        def __getitem__(self, i):
            s = super().__getitem__(i)
            s["zoom2"] = s["zoom1"].repeat_interleave(2, 1).repeat_interleave(2, 2)
            s["zoom2_label"] = s["zoom1_label"].repeat_interleave(2, 0).repeat_interleave(2, 1)
            return s

    t = trainer(max_steps=2, limit_val_batches=1)
    t.fit(model, DataLoader(Deep(8), batch_size=4), DataLoader(Deep(4), batch_size=4))
    assert len(t.optimizers) == 5
    batch = next(iter(DataLoader(Deep(4), batch_size=4)))
    model.eval()
    images, _, q = zoom_pyramid(images_only(batch), 2)
    assert q == [1, 2, 2] and images[2].shape == (64, 3, H, H)  # 4 fields -> 16 -> 64 tiles

    def up(x, side):
        return nn.functional.interpolate(x, size=(side, side), mode="bilinear")

    with torch.no_grad():
        f1 = model.segmenters[1](model.normalize(images[1]))  # (16, 2, H/8, H/8)
        f2 = model.segmenters[2](model.normalize(images[2]))  # (64, 2, H/8, H/8)
        expected = {  # m = 2 on values: level 1 zooms again (stitch twice) or answers itself
            5.0: up(from_tiles(from_tiles(f2, 2), 2), H),
            -5.0: up(from_tiles(up(f1, H // 4), 2), H),
        }
        for bias in (5.0, -5.0):
            nn.init.constant_(model.policies[1].fc.bias, bias)
            nn.init.constant_(model.policies[0].fc.bias, 5.0)
            out = model.batch_logits(batch)
            assert len(model._decisions) == 2 and model._decisions[1].numel() == 16
            assert bool(model._decisions[1].all()) == (bias > 0)
            assert torch.allclose(out, expected[bias], atol=1e-5)


def test_bad_settings():
    with pytest.raises(InputError, match="alpha"):
        toy_razn(alpha=0.4)
    with pytest.raises(InputError, match="Adam"):
        toy_razn(optimizer="sgd")
    model = toy_razn(levels=2)
    with pytest.raises(InputError, match="zoom2"):
        model.batch_logits(next(iter(DataLoader(ToyFields(2), batch_size=2))))


@pytest.mark.parametrize("cls", [Scale1, Scale2, MultiScaleMax, AttentionToScale])
def test_baselines_fit_and_predict_on_the_field_grid(cls):
    torch.manual_seed(0)
    model = cls(num_classes=2, class_map=None, width=0.0625, num_overlays=0)
    data = DataLoader(ToyFields(8), batch_size=4)
    trainer(max_steps=2).fit(model, data)
    batch = next(iter(data))
    model.eval()
    with torch.no_grad():
        assert model.batch_logits(batch).shape == (4, 2, H, H)
        loss = model.train_loss(batch)
    assert torch.isfinite(loss)


class Sleeper(pl.LightningModule):
    """A 'method' that takes ~30 ms per field, measured against a ~10 ms reference."""

    num_classes = 2

    def batch_logits(self, batch):
        time.sleep(0.03)
        return torch.zeros(1, 2, *batch["label"].shape[-2:])

    def timing_reference(self):
        class Ref(nn.Module):
            def forward(self, x):
                time.sleep(0.01)
                return torch.zeros(1, 2, 2, 2)

        return Ref()

    def normalize(self, x):
        return x.float()


def test_relative_inference_time_is_a_ratio_to_the_reference():
    cb = RelativeInferenceTime(num_fields=6, warmup=1, repeats=1)
    fields = [next(iter(DataLoader(ToyFields(1), batch_size=1)))] * 2
    result = cb.measure(Sleeper(), fields)
    assert result["relative_inference_time"] == pytest.approx(3.0, rel=0.3)
    assert result["timing_fields"] == 2 and result["inference_time_ms"] >= 30
    assert cb.measure(Sleeper(), []) == {}


def test_timing_callback_logs_through_trainer_test():
    model = Scale1(num_classes=2, class_map=None, width=0.0625, num_overlays=0)
    cb = RelativeInferenceTime(num_fields=5, warmup=1, repeats=2)
    out = trainer(callbacks=[cb]).test(model, DataLoader(ToyFields(3), batch_size=2), verbose=False)
    logged = out[0]
    assert logged["test/timing_fields"] == 3.0  # 3 distinct fields cycled to 5
    assert logged["test/relative_inference_time"] > 0
    assert "test/relative_inference_time_std" in logged and "test/miou" in logged


def test_merged_group_iou():
    cm = np.array([[5, 1, 0, 0], [1, 3, 1, 0], [0, 0, 4, 2], [0, 0, 1, 6]])
    g = group_iou(cm, {"non-carcinoma": [0, 1], "carcinoma": [2, 3]})
    # non-carcinoma: tp 10, truth 11, pred 10 -> 10 / 11; carcinoma: tp 13, truth 13, pred 14
    assert g["group_iou/non_carcinoma"] == pytest.approx(10 / 11)
    assert g["group_iou/carcinoma"] == pytest.approx(13 / 14)
    # inside carcinoma: in situ 4 of 6, invasive 6 of 7 -> balanced accuracy (4/6 + 6/7) / 2
    assert g["within_group/carcinoma"] == pytest.approx((4 / 6 + 6 / 7) / 2)
    assert g["within_group/non_carcinoma"] == pytest.approx((5 / 6 + 3 / 4) / 2)
    # a net that calls all carcinoma "invasive" finds the group and cannot tell the pair apart
    blind = np.array([[5, 0, 0, 0], [0, 5, 0, 0], [0, 0, 0, 6], [0, 0, 0, 7]])
    assert group_iou(blind, {"c": [2, 3]}) == {"group_iou/c": 1.0, "within_group/c": 0.5}
    bach = load_class_map("bach")
    assert bach.groups == {"non-carcinoma": (0, 1), "carcinoma": (2, 3)}
    s = scores(cm, list(bach.classes), True, bach.groups)
    assert s["group_iou/carcinoma"] == g["group_iou/carcinoma"] and "bach_score" in s


def test_fusion_rules_on_values():
    """MS = per-pixel max of the two scales' maps; attention = softmax-weighted sum on the
    stitched tiles' grid (Scale 2's resolution): all on the label grid, checked on values."""
    batch = next(iter(DataLoader(ToyFields(4), batch_size=4)))
    size = batch["label"].shape[-2:]

    def up(x):
        return torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)

    torch.manual_seed(0)
    ms = MultiScaleMax(num_classes=2, class_map=None, width=0.0625, num_overlays=0).eval()
    with torch.no_grad():
        l0, l1, _, q = ms._both(batch)
        assert q == 2 and l1.shape[-1] == l0.shape[-1]  # tiles as big as x0: 2x finer
        expected = torch.maximum(up(l0), up(from_tiles(l1, 2)))
        assert torch.allclose(ms.batch_logits(batch), expected, atol=1e-6)
    torch.manual_seed(0)
    att = AttentionToScale(num_classes=2, class_map=None, width=0.0625, num_overlays=0).eval()
    last = att.attention[-1]
    with torch.no_grad():
        l0, l1, _, q = att._both(batch)
        fine, grid = from_tiles(l1, 2), from_tiles(l1, 2).shape[-2:]
        coarse = torch.nn.functional.interpolate(l0, size=grid, mode="bilinear")
        last.weight.zero_()
        last.bias.copy_(torch.tensor([-30.0, 30.0]))  # all weight on the zoomed scale
        assert torch.allclose(att.batch_logits(batch), up(fine), atol=1e-5)  # = Scale 2's map
        last.bias.zero_()  # equal weights
        assert torch.allclose(att.batch_logits(batch), up(0.5 * coarse + 0.5 * fine), atol=1e-5)
