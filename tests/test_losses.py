"""DMMN class weights and the weighted cross-entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from datamodules.errors import InputError
from lightning_modules.losses import IGNORE, WeightedCrossEntropy, dmmn_class_weights


def test_dmmn_weights_hand_example():
    w = dmmn_class_weights([10, 30, 60, 0])
    assert w.dtype == torch.float32
    assert torch.allclose(w, torch.tensor([0.9, 0.7, 0.4, 1.0]))


@pytest.mark.parametrize("counts", [[0, 0, 0], [5, -1], []])
def test_dmmn_weights_reject_unusable_counts(counts):
    with pytest.raises(InputError):
        dmmn_class_weights(counts)


def _batch(seed: int = 0, n: int = 2, c: int = 4, hw: int = 8):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, hw, hw, generator=g, requires_grad=True)
    target = torch.randint(0, c, (n, hw, hw), generator=g)
    target[:, :3] = IGNORE
    return logits, target


def test_divides_by_the_number_of_annotated_pixels():
    """The DMMN paper: Σ_pixels w_t · ℓ / N over annotated pixels, not / Σ w_t."""
    logits, target = _batch()
    w = torch.tensor([0.9, 0.7, 0.4, 1.0])
    loss = WeightedCrossEntropy(w)(logits, target)
    valid = target != IGNORE
    per_pixel = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")
    by_hand = (w[target[valid]] * per_pixel[valid]).sum() / valid.sum()
    assert valid.sum() == 2 * 5 * 8  # 3 of 8 rows ignored
    assert torch.allclose(loss, by_hand)
    weighted_mean = F.cross_entropy(logits, target, weight=w, ignore_index=IGNORE)
    assert not torch.allclose(loss, weighted_mean)  # the old reading differs on this batch
    # uint8 targets, as the datasets produce, work too
    assert torch.allclose(WeightedCrossEntropy(w)(logits, target.to(torch.uint8)), by_hand)


def test_weights_normalisation_is_torch_weighted_mean():
    logits, target = _batch()
    w = torch.tensor([0.9, 0.7, 0.4, 1.0])
    loss = WeightedCrossEntropy(w, normalize="weights")(logits, target)
    assert torch.allclose(loss, F.cross_entropy(logits, target, weight=w, ignore_index=IGNORE))
    with pytest.raises(InputError, match="normalize"):
        WeightedCrossEntropy(w, normalize="mean")


def test_class_weights_survive_a_single_class_batch():
    """Dividing by N keeps w_c in a batch of one class (Σ w_t would cancel it)."""
    logits, target = _batch()
    target = torch.where(target == IGNORE, target, torch.zeros_like(target))  # class 0 only
    plain = WeightedCrossEntropy.uniform(4)(logits, target)
    assert torch.allclose(WeightedCrossEntropy([0.25, 1, 1, 1])(logits, target), 0.25 * plain)
    by_weights = WeightedCrossEntropy([0.25, 1, 1, 1], normalize="weights")(logits, target)
    assert torch.allclose(by_weights, plain)


def test_weights_change_the_loss():
    logits, target = _batch()
    a = WeightedCrossEntropy([1.0, 1.0, 1.0, 1.0])(logits, target)
    b = WeightedCrossEntropy([1.0, 0.1, 0.1, 0.1])(logits, target)
    assert not torch.allclose(a, b)


def test_ignored_pixels_do_not_matter():
    logits, target = _batch()
    loss_fn = WeightedCrossEntropy([0.9, 0.7, 0.4, 1.0])
    base = loss_fn(logits, target)
    ignored = (target == IGNORE).unsqueeze(1).expand_as(logits)
    changed = torch.where(ignored, logits * 50 + 7, logits)
    assert torch.allclose(loss_fn(changed, target), base)
    base.backward()
    assert logits.grad[ignored].abs().max() == 0
    assert logits.grad[~ignored].abs().max() > 0


def test_all_ignored_batch_gives_zero_loss_with_grad():
    logits, target = _batch()
    target = torch.full_like(target, IGNORE)
    loss = WeightedCrossEntropy([0.9, 0.7, 0.4, 1.0])(logits, target)
    assert torch.isfinite(loss) and loss.item() == 0.0
    assert loss.requires_grad and loss.grad_fn is not None
    loss.backward()
    assert logits.grad is not None and torch.all(logits.grad == 0)


def test_batch_of_zero_weight_class_is_finite():
    logits, target = _batch(c=2)
    target = torch.zeros_like(target)
    loss = WeightedCrossEntropy([0.0, 1.0])(logits, target)
    assert loss.item() == 0.0 and loss.grad_fn is not None


def test_weights_are_a_saved_buffer():
    loss_fn = WeightedCrossEntropy([0.9, 0.7, 0.4, 1.0])
    assert "weight" in dict(loss_fn.named_buffers())
    state = loss_fn.state_dict()
    fresh = WeightedCrossEntropy.uniform(4)
    assert torch.equal(fresh.weight, torch.ones(4))
    fresh.load_state_dict(state)
    assert torch.allclose(fresh.weight, torch.tensor([0.9, 0.7, 0.4, 1.0]))
    assert loss_fn.to(torch.float64).weight.dtype == torch.float64


def test_set_weight_updates_in_place_and_checks_shape():
    loss_fn = WeightedCrossEntropy.uniform(3)
    buf = loss_fn.weight
    loss_fn.set_weight(dmmn_class_weights([1, 1, 2]))
    assert loss_fn.weight is buf
    assert torch.allclose(loss_fn.weight, torch.tensor([0.75, 0.75, 0.5]))
    with pytest.raises(InputError, match="3 class weights"):
        loss_fn.set_weight([1.0, 1.0])
    with pytest.raises(InputError):
        loss_fn.set_weight([1.0, -1.0, 1.0])


def test_rejects_wrong_number_of_classes():
    logits, target = _batch(c=4)
    with pytest.raises(ValueError, match="logits"):
        WeightedCrossEntropy.uniform(3)(logits, target)
    with pytest.raises(InputError):
        WeightedCrossEntropy([float("nan"), 1.0])
