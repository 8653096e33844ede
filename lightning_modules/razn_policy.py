"""RAZN's REINFORCE pieces: per-node losses, the relative-loss reward, the bounded Bernoulli
and the zoom statistics logged per class (kept apart from the task so each is tested alone)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric


def node_losses(logits: Tensor, label: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Per-node mean cross-entropy over labelled pixels (logits upsampled to the label grid)
    and the labelled fraction of each node; nodes without labels get loss 0."""
    logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
    ce = F.cross_entropy(logits.float(), label, ignore_index=ignore_index, reduction="none")
    valid = (label != ignore_index).flatten(1).float()
    count = valid.sum(1)
    loss = (ce.flatten(1) * valid).sum(1) / count.clamp_min(1)
    return loss, count / valid.shape[1]


def zoom_rewards(
    loss_j: list[Tensor],
    frac: list[Tensor],
    actions: list[Tensor],
    q: list[int],
    *,
    literal: bool = False,
    zoom_cost: float = 0.0,
    clip: float = 5.0,
) -> tuple[list[Tensor], Tensor, Tensor]:
    """Rewards of the zoom actions, bottom-up over the levels (detached inputs).

    ``loss_j[k]`` / ``frac[k]``: per-node loss of f_k and labelled fraction at level k;
    ``actions[k]``: the zoom actions of level-k nodes. A zoom's J1 is the area-weighted loss of
    the sampled composition below the node (for one level: f_θ1's loss over the r² tiles), and
    R = a·(J0 − J1)/J0 − a·zoom_cost (``literal``: a·(J1 − J0)/J0, the printed formula),
    clipped to ±``clip``. Also returns the composition's per-field loss and labelled fraction.
    """
    levels = len(actions)
    final_j, final_w = loss_j[levels], frac[levels]
    rewards: list[Tensor] = [torch.zeros(0)] * levels
    for k in range(levels - 1, -1, -1):
        n = q[k + 1] ** 2
        w = final_w.view(-1, n)
        j_zoom = (w * final_j.view(-1, n)).sum(1) / w.sum(1).clamp_min(1e-12)
        j_stay = loss_j[k]
        change = (j_zoom - j_stay) if literal else (j_stay - j_zoom)
        r = actions[k] * (change / j_stay.clamp_min(1e-6) - zoom_cost)
        rewards[k] = r.clamp(-clip, clip)
        a = actions[k].bool()
        final_j = torch.where(a, j_zoom, j_stay)
        final_w = torch.where(a, w.mean(1), frac[k])
    return rewards, final_j, final_w


def bounded(p: Tensor, alpha: float) -> Tensor:
    """p̃ = αp + (1−α)(1−p): every action keeps probability ≥ 1 − α (exploration)."""
    return alpha * p + (1 - alpha) * (1 - p)


class ZoomStats(Metric):
    """Zoom decisions at inference: per level (nodes seen, nodes zoomed) and, for the first
    level, per field class (the field's most frequent labelled class)."""

    full_state_update = False

    def __init__(self, num_classes: int, levels: int, ignore_index: int = 255):
        super().__init__()
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.add_state("seen", torch.zeros(levels), dist_reduce_fx="sum")
        self.add_state("zoomed", torch.zeros(levels), dist_reduce_fx="sum")
        self.add_state("class_seen", torch.zeros(num_classes + 1), dist_reduce_fx="sum")
        self.add_state("class_zoomed", torch.zeros(num_classes + 1), dist_reduce_fx="sum")

    def update(self, decisions: list[Tensor], label: Tensor) -> None:
        for k, d in enumerate(decisions):
            self.seen[k] += d.numel()
            self.zoomed[k] += d.float().sum()
        lab = label.flatten(1)
        counts = torch.stack([(lab == c).sum(1) for c in range(self.num_classes)], 1)
        cls = torch.where(counts.sum(1) > 0, counts.argmax(1), self.num_classes)
        self.class_seen.index_add_(0, cls, torch.ones_like(cls, dtype=torch.float))
        self.class_zoomed.index_add_(0, cls, decisions[0].float())

    def compute(self) -> dict[str, Tensor]:
        return {
            k: getattr(self, k).clone() for k in ("seen", "zoomed", "class_seen", "class_zoomed")
        }


# ------------------------------------------------------------------------------ module
