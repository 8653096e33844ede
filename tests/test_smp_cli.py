"""The smp baselines: the three experiments through the real `wsiseg` CLI on the synthetic TIGER
layout (tests/conf/smp_tiny.yaml: 64² patches, batch 2), and `SMPSegmenter`'s own contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from datamodules.errors import InputError
from datamodules.synthetic.generator import ensure_dataset
from lightning_modules.cli.main import main
from lightning_modules.smp_baselines import BinaryAsTwoClass, SMPSegmenter
from tests.cli_args import experiment_args, short_train
from tests.score_checks import iou_by_hand

ROOT = Path(__file__).resolve().parents[1]
EXPS = ["smp_unet_vgg16", "smp_unet_r34", "smp_fpn_r34"]
TINY_TIGER = {"n_slides": 3, "size": 1024, "seed": 0, "splits": (1, 1, 1), "layout": "tiger"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The tiny synthetic TIGER set of test_tiger.py (same path and parameters: made once)."""
    out = tmp_path_factory.getbasetemp() / "synthetic_tiger"
    ensure_dataset(out, progress=False, workers=1, **TINY_TIGER)
    return out


def args(command, exp, data, out, schedule=""):
    overlays = (f"schedule/{schedule}.yaml",) if schedule else ()
    return experiment_args(command, exp, data, out, tiny="smp_tiny.yaml", overlays=overlays)


@pytest.mark.parametrize("exp", EXPS)
def test_fast_dev_run(exp, data, out, capsys):
    rc = main([*args("fit", exp, data, out), "--trainer.fast_dev_run", "1"])
    assert rc == 0, capsys.readouterr().err[-3000:]
    assert (out / "overlays" / "val_epoch000_0.png").is_file()


@pytest.mark.slow
def test_train_writes_stroma_iou(data, out, capsys):
    limits = short_train(test_batches=1, train_batches=1)
    rc = main([*args("train", "smp_fpn_r34", data, out, schedule="cpu_budget_smp"), *limits])
    printed = capsys.readouterr()
    assert rc == 0, printed.err[-3000:]
    assert "schedule: REDUCED — CPU budget" in printed.out
    run = out / "smp_fpn_r34" / "version_0"
    result = json.loads((run / "results.json").read_text())
    assert result["method"] == "SMPSegmenter"
    assert result["hparams"]["arch"] == "FPN" and result["hparams"]["mode"] == "binary"
    assert result["hparams"]["lr"] == 1e-3 and result["hparams"]["lr_milestones"] == [4]
    stroma = result["class_names"].index("stroma")
    assert result["scores"]["iou/stroma"] == pytest.approx(
        iou_by_hand(result["confusion"], [stroma])
    )
    assert Path(result["best_checkpoint"]).name.startswith("epoch000-iou")  # val/iou/stroma
    assert "| stroma |" in (run / "results.md").read_text()
    config = (run / "config.yaml").read_text()
    assert "size: 64" in config and "TigerDataModule" in config  # tiny.yaml came last


@pytest.mark.slow
def test_seven_classes_and_patch_split(data, out, capsys):
    rc = main([
        *args("fit", "smp_unet_r34", data, out),
        "--model.init_args.num_classes", "7",
        "--model.init_args.class_map", "tiger",
        "--model.init_args.mode", "multiclass",
        "--data.init_args.class_map", "tiger",
        "--data.init_args.split_by", "patch",
        "--trainer.fast_dev_run", "1",
    ])  # fmt: skip
    assert rc == 0, capsys.readouterr().err[-3000:]


def test_imagenet_offline_fails_fast(data, out, capsys):
    rc = main([
        *args("fit", "smp_unet_r34", data, out),
        "--model.init_args.encoder_weights", "imagenet",
        "--trainer.fast_dev_run", "1",
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "ImageNet weights for resnet34" in err and "resnet34-" in err and "null" in err
    assert not out.exists()  # failed before any training


def test_patch_size_must_fit_the_encoder(data, out, capsys):
    rc = main([
        *args("fit", "smp_fpn_r34", data, out),
        "--data.init_args.view.init_args.size", "48",
        "--trainer.fast_dev_run", "1",
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "divisible by 32" in err and "48" in err


# ---------------------------------------------------------------------- the module itself
def test_binary_logits_are_sigmoid_probabilities():
    net = BinaryAsTwoClass(torch.nn.Conv2d(3, 1, 1))
    x = torch.randn(2, 3, 8, 8)
    z = net.net(x)
    logits = net(x)
    assert logits.shape == (2, 2, 8, 8)
    torch.testing.assert_close(torch.softmax(logits, 1)[:, 1:], torch.sigmoid(z))
    assert torch.equal(logits.argmax(1), (z[:, 0] > 0).long())


def test_dice_ignores_unlabelled_pixels():
    model = SMPSegmenter("FPN", "resnet18", num_overlays=0)
    logits = torch.randn(2, 2, 32, 32)
    label = torch.randint(0, 2, (2, 32, 32))
    loss = model.criterion(logits, label)
    noisy = logits.clone()
    label_ignored = label.clone()
    label_ignored[:, :8] = 255
    noisy[:, :, :8] = torch.randn(2, 2, 8, 32) * 50  # predictions there must not matter
    a = model.criterion(logits, label_ignored)
    b = model.criterion(noisy, label_ignored)
    torch.testing.assert_close(a, b)
    assert not torch.isclose(loss, a)


def test_dice_over_all_classes_or_the_positive_one():
    from segmentation_models_pytorch.losses import DiceLoss

    z = torch.randn(2, 1, 16, 16)
    logits = torch.cat([torch.zeros_like(z), z], 1)
    label = torch.randint(0, 2, (2, 16, 16))
    positive = SMPSegmenter("FPN", "resnet18", dice_classes="positive", num_overlays=0)
    torch.testing.assert_close(positive.criterion(logits, label), DiceLoss("binary")(z, label))
    both = SMPSegmenter("FPN", "resnet18", num_overlays=0).criterion(logits, label)
    probs = torch.sigmoid(z[:, 0])
    dice = [
        2 * (p * (label == c)).sum() / (p.sum() + (label == c).sum())
        for c, p in ((0, 1 - probs), (1, probs))
    ]
    torch.testing.assert_close(both, 1 - (dice[0] + dice[1]) / 2)


def test_local_encoder_weights_are_loaded(tmp_path):
    import torchvision

    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    model = SMPSegmenter("Unet", "resnet18", encoder_weights=str(path), num_overlays=0)
    encoder = model.net.net.encoder
    torch.testing.assert_close(encoder.conv1.weight, state["conv1.weight"])
    with pytest.raises(InputError, match="does not fit"):
        SMPSegmenter("Unet", "resnet34", encoder_weights=str(path), num_overlays=0)


def test_bad_names_and_multi_view_batches():
    with pytest.raises(InputError, match="unknown smp architecture 'Unett'"):
        SMPSegmenter("Unett", "resnet18")
    with pytest.raises(InputError, match="unknown smp encoder 'resnet3'"):
        SMPSegmenter("Unet", "resnet3")
    with pytest.raises(InputError, match="binary mode needs num_classes 2"):
        SMPSegmenter("Unet", "resnet18", num_classes=4, class_map="bach", mode="binary")
    with pytest.raises(InputError, match="dice_classes"):
        SMPSegmenter("Unet", "resnet18", num_classes=4, class_map="bach", dice_classes="positive")
    bach = SMPSegmenter("Unet", "resnet18", num_classes=4, class_map="bach", num_overlays=0)
    views = torch.randint(0, 255, (2, 3, 3, 64, 64), dtype=torch.uint8)  # (B, V, 3, H, W)
    assert bach.hparams.mode == "multiclass"
    torch.testing.assert_close(bach(views), bach(views[:, 0]))
    assert bach(views).shape == (2, 4, 64, 64)


def test_lr_steps_down_at_the_milestone():
    model = SMPSegmenter("FPN", "resnet18", lr=1e-4, lr_milestones=[15], num_overlays=0)
    conf = model.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(25):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[14] == pytest.approx(1e-4) and lrs[15] == pytest.approx(1e-5)
    assert conf["lr_scheduler"]["interval"] == "epoch"
