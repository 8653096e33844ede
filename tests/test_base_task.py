"""SegmentationTask under a real Trainer (CPU), plus the overlay helpers it uses."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset

from datamodules.errors import InputError
from datamodules.views.dual import DualInputView
from datamodules.views.single import SingleView
from datamodules.views.zoom import ZoomView
from lightning_modules.base import SegmentationTask
from lightning_modules.metrics import scores
from lightning_modules.outputs.overlays import blend, colorize, overlay_panel, save_png

SIZE = 16


class TinyNet(nn.Module):
    """View 0 of a multi-view input; ``stride`` 2 tests the upsampling to the label grid."""

    def __init__(self, num_classes: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 3, padding=1, stride=stride)
        self.last_input: torch.Tensor | None = None

    def forward(self, x):
        self.last_input = x.detach()
        return self.conv(x[:, 0] if x.ndim == 5 else x)


class TinyTask(SegmentationTask):
    def __init__(
        self,
        num_classes: int = 4,
        class_map: str | None = None,
        num_overlays: int = 4,
        stride: int = 1,
        lr: float = 0.1,
    ):
        super().__init__(num_classes, class_map=class_map, num_overlays=num_overlays)

    def configure_models(self):
        self.net = TinyNet(self.hparams.num_classes, self.hparams.stride)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class RandomPatches(Dataset):
    def __init__(self, n: int, num_classes: int, views: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        shape = (n, views, 3, SIZE, SIZE) if views else (n, 3, SIZE, SIZE)
        self.images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
        self.labels = torch.randint(0, num_classes, (n, SIZE, SIZE), generator=g)
        self.labels[:, :4, :4] = 255  # an unlabeled corner

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        meta = {"slide": f"slide{i % 2}", "x": i * SIZE, "y": 0}
        return {"image": self.images[i], "label": self.labels[i], "meta": meta}


class RandomData(pl.LightningDataModule):
    def __init__(self, num_classes: int, views: int = 0, batch_size: int = 3):
        super().__init__()
        self.num_classes, self.views, self.batch_size = num_classes, views, batch_size

    def _loader(self, seed: int, n: int = 6):
        data = RandomPatches(n, self.num_classes, self.views, seed)
        return DataLoader(data, batch_size=self.batch_size)

    def train_dataloader(self):
        return self._loader(0)

    def val_dataloader(self):
        return self._loader(1)

    def test_dataloader(self):
        return self._loader(2, n=7)

    def predict_dataloader(self):
        return self._loader(3, n=4)


class ImageRecordingLogger(CSVLogger):
    """A CSVLogger with WandbLogger's ``log_image``, to see that overlays reach loggers."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.images: list[tuple[str, int, list[str]]] = []

    def log_image(self, key, images, step=None, **kwargs):
        assert all(isinstance(im, np.ndarray) and im.dtype == np.uint8 for im in images)
        self.images.append((key, len(images), list(kwargs["caption"])))


def trainer(tmp_path: Path, logger) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=2,
        log_every_n_steps=1,
        accelerator="cpu",
        devices=1,
        logger=logger,
        default_root_dir=tmp_path,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def confusion_by_hand(task: SegmentationTask, loader: DataLoader, c: int) -> np.ndarray:
    cm = np.zeros((c, c), dtype=np.int64)
    task.eval()
    with torch.no_grad():
        for batch in loader:
            pred = task.logits(batch["image"], batch["label"].shape[-2:]).argmax(1).numpy()
            truth = batch["label"].numpy()
            keep = truth != 255
            np.add.at(cm, (truth[keep], pred[keep]), 1)
    return cm


def test_fit_and_test_log_scores_and_write_overlays(tmp_path):
    task = TinyTask(num_classes=4, class_map="bach", num_overlays=4)
    data = RandomData(4)
    logger = ImageRecordingLogger(tmp_path)
    t = trainer(tmp_path, logger)
    t.fit(task, datamodule=data)

    assert "val/miou" in t.callback_metrics and "val/bach_score" in t.callback_metrics
    assert "val/iou/in_situ" in t.callback_metrics and "val/loss" in t.callback_metrics
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = [r["val/miou"] for r in rows if r.get("val/miou")]
    # the end-of-fit weights scored the (whole, two-batch) validation set once
    val_cm = confusion_by_hand(task, data.val_dataloader(), 4)
    val_miou = scores(val_cm, task.class_names, ordinal=True)["miou"]
    assert len(logged) == 1 and float(logged[0]) == pytest.approx(val_miou, abs=1e-6)
    assert len([r for r in rows if r.get("train/loss")]) == 2  # one per training step
    assert task.val_scores["miou"] == pytest.approx(float(logged[0]))

    overlays = Path(t.log_dir) / "overlays"
    val_pngs = sorted(p.name for p in overlays.glob("val_*.png"))
    assert val_pngs == [f"val_epoch000_{i}.png" for i in range(3)]  # first batch holds 3
    picture = cv2.imread(str(overlays / "val_epoch000_0.png"))
    assert picture.shape[0] > 192 and picture.shape[1] > 3 * 192  # enlarged 16² patches + legend

    results = t.test(task, datamodule=data)
    test_pngs = sorted(p.name for p in overlays.glob("test_*.png"))
    assert test_pngs == [f"test_{i}.png" for i in range(4)]  # 3 from batch 0, 1 from batch 1
    assert [k for k, n, _ in logger.images] == ["val/overlays", "test/overlays", "test/overlays"]
    assert sum(n for k, n, _ in logger.images if k == "test/overlays") == 4

    # Every test batch (7 patches in 3 batches) reached the one confusion matrix.
    cm = confusion_by_hand(task, data.test_dataloader(), 4)
    assert np.array_equal(task.test_confusion, cm)
    assert cm.sum() == 7 * (SIZE * SIZE - 16)
    expected = scores(cm, task.class_names, ordinal=True)
    for key in ("iou/normal", "iou/invasive", "miou", "bach_score", "accuracy"):
        assert task.test_scores[key] == pytest.approx(expected[key])
        assert results[0][f"test/{key}"] == pytest.approx(expected[key], abs=1e-6)


def test_multiview_batches_and_predict(tmp_path):
    task = TinyTask(num_classes=3, num_overlays=2, stride=2)  # logits at half size
    data = RandomData(3, views=3, batch_size=2)
    t = trainer(tmp_path, CSVLogger(tmp_path))
    t.fit(task, datamodule=data)
    assert task.net.last_input.shape[1:] == (3, 3, SIZE, SIZE)
    assert "val/miou" in t.callback_metrics and "val/iou/class_2" in t.callback_metrics
    assert "val/bach_score" not in t.callback_metrics  # no ordinal class map
    assert (Path(t.log_dir) / "overlays" / "val_epoch000_1.png").is_file()

    t.test(task, datamodule=data)
    assert {"iou/class_0", "iou/class_1", "iou/class_2", "miou"} <= set(task.test_scores)

    out = t.predict(task, datamodule=data)
    assert len(out) == 2
    probs = out[0]["probs"]
    assert probs.dtype == torch.float16 and probs.shape == (2, 3, SIZE, SIZE)
    assert torch.allclose(probs.float().sum(1), torch.ones(2, SIZE, SIZE), atol=2e-3)
    assert out[1]["meta"]["slide"] == ["slide0", "slide1"]
    assert out[1]["meta"]["x"].tolist() == [2 * SIZE, 3 * SIZE]


def test_normalisation_hparams_and_parameter_count():
    task = TinyTask(num_classes=2, lr=0.5)
    x = torch.tensor([0, 255], dtype=torch.uint8)
    assert task.normalize(x).tolist() == [-2.0, 2.0]
    assert task.normalize(torch.tensor([0.0, 1.0])).tolist() == [-2.0, 2.0]
    task(torch.full((1, 3, 4, 4), 255, dtype=torch.uint8))
    assert torch.all(task.net.last_input == 2.0)
    assert task.hparams.lr == 0.5 and task.hparams.num_classes == 2
    assert task.hparams.ignore_index == 255 and task.hparams.norm_std == 0.25
    assert task.parameter_count == 3 * 2 * 9 + 2
    assert task.class_names == ["class_0", "class_1"]


def test_class_map_must_match_num_classes():
    with pytest.raises(InputError, match="4 classes"):
        TinyTask(num_classes=3, class_map="bach")
    with pytest.raises(InputError, match="unknown class map"):
        TinyTask(num_classes=3, class_map="no_such_map")


class ConfiguredTask(SegmentationTask):
    """The base's optimizer (from the arguments) and view check, with a two-part net."""

    def __init__(
        self,
        optimizer: str = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        head_lr: float = 0.5,
    ):
        super().__init__(num_classes=2)

    def configure_models(self):
        self.net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1))

    def parameter_groups(self):
        return [
            {"params": self.net[0].parameters()},
            {"params": self.net[1].parameters(), "lr": self.hparams.head_lr},
        ]

    def view_types(self):
        return (SingleView,)

    def view_counts(self):
        return (1,)


def test_optimizer_from_the_arguments():
    sgd = ConfiguredTask().configure_optimizers()
    assert isinstance(sgd, torch.optim.SGD)
    assert [g["lr"] for g in sgd.param_groups] == [0.1, 0.5]
    assert {(g["momentum"], g["weight_decay"]) for g in sgd.param_groups} == {(0.9, 1e-4)}
    adam = ConfiguredTask(optimizer="adam", weight_decay=0.0).configure_optimizers()
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["weight_decay"] == 0.0
    assert TinyTask(lr=0.1).optimizer_settings().name == "adam"  # no optimizer argument: Adam
    bad = "ConfiguredTask trains with SGD or Adam: optimizer must be 'sgd', 'adam', got 'rmsprop'"
    with pytest.raises(InputError, match=bad):
        ConfiguredTask(optimizer="rmsprop")  # at construction, not when fitting starts
    with pytest.raises(InputError, match="lr must be > 0, got 0"):
        ConfiguredTask(lr=0)
    with pytest.raises(InputError, match="weight_decay must be >= 0"):
        ConfiguredTask(weight_decay=-1.0)


def test_view_check_in_setup(tmp_path):
    task = ConfiguredTask()
    task.check_view(SingleView(size=16))
    counts = "ConfiguredTask takes 1 image input.s. but the data view DualInputView gives 2"
    with pytest.raises(InputError, match=counts + "; use datamodules.views.single.SingleView"):
        task.check_view(DualInputView())
    types = "reads datamodules.views.single.SingleView batches, not the data view ZoomView"
    with pytest.raises(InputError, match=types):
        task.check_view(ZoomView())
    data = RandomData(2)
    data.view = DualInputView()
    t = trainer(tmp_path, False)
    with pytest.raises(InputError, match="DualInputView gives 2"):
        t.fit(task, datamodule=data)
    assert t.global_step == 0  # refused in setup, before any step


def test_colorize_and_blend():
    colors = [(255, 0, 0), (0, 0, 255)]
    label = np.array([[0, 1], [255, 7]])
    rgb = colorize(label, colors)
    assert rgb[0, 0].tolist() == [255, 0, 0] and rgb[0, 1].tolist() == [0, 0, 255]
    assert rgb[1].tolist() == [[0, 0, 0], [0, 0, 0]]  # ignore and unknown values: black
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    out = blend(image, label, colors, alpha=0.5)
    assert out[0, 0].tolist() == [178, 50, 50]  # rint(0.5·100 + 0.5·255) = 178 (half to even)
    assert out[1].tolist() == image[1].tolist()  # unlabeled pixels keep the image


def test_overlay_panel_layout_and_png(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # resized to the 32² label grid
    truth = rng.integers(0, 3, (32, 32))
    names = ["normal tissue", "benign", "carcinoma"]
    panel = overlay_panel(image, truth, truth, names, [(255, 0, 0), (0, 255, 0), (0, 0, 255)])
    assert panel.dtype == np.uint8 and panel.shape[1] == 3 * 192 + 2 * 4
    assert panel.shape[0] > 192 + 20  # title bar and legend strip
    path = save_png(tmp_path / "a" / "b.png", panel)
    back = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    assert np.array_equal(back, panel)
    with pytest.raises(ValueError, match="same"):
        overlay_panel(image, truth, truth[:16], names, [(0, 0, 0)] * 3)
