"""`RAZN`: Reinforced Auto-Zoom Net (Dong et al. 2018) on the shared task.

A light policy g_φ looks at a field x0 (magnification m) and decides whether to zoom in: either
the segmenter f_θ0 answers on x0, or f_θ1 segments the r² tiles of the same field at r·m and
their stitched output, resized to x0's grid, is the answer.  Trained with REINFORCE (the paper's
Algorithm 1, per sample): both segmenters are run on every field to get the losses J0 and J1
(BatchNorm statistics move only where they learn), an action is drawn from the bounded Bernoulli
p̃ = αp + (1−α)(1−p), the reward is the relative loss change R = a·(J0 − J1)/J0, φ takes the
policy-gradient step on every field, θ1 learns only from fields that were zoomed and θ0 only
from fields that were not.

The paper prints R = a·(J1 − J0)/J0, which rewards zooming when it *raises* the loss, against
its own text; ``literal_reward: true`` uses the printed sign (to reproduce it), the default the
stated intent.  ``levels`` > 1 zooms recursively (the paper's future work): one policy and one
segmenter per level; each zoomed tile is again a field for the next policy.  See docs/razn.md.

Manual optimisation: one Adam per network (three for ``levels`` = 1), each ×``lr_gamma`` every
``lr_step`` iterations, stepped here.  One ``manual_backward`` of the summed losses per step,
with the per-sample selections as 0/1 weights, so every parameter is in every backward and DDP's
all-reduce never waits for a rank that skipped one; an optimizer whose network no sample chose
on *any* rank does not step (Adam would otherwise move it on momentum alone).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.errors import InputError
from lightning_modules.metrics import class_key
from lightning_modules.nets.razn import (
    FCNSegmenter,
    PolicyNet,
    from_tiles,
    images_only,
    zoom_pyramid,
)
from lightning_modules.optim import AdamOnly
from lightning_modules.razn_common import ZoomTask
from lightning_modules.razn_policy import ZoomStats, bounded, node_losses, zoom_rewards


class RAZN(ZoomTask):
    """RAZN on a :class:`datamodules.views.zoom.ZoomView` batch.

    Args:
        num_classes, class_map, num_overlays: as in :class:`SegmentationTask`.
        width: channel multiplier of every network (1.0 = ResNet-18).
        levels: zoom levels (1 = the paper; must match the view's ``levels``).
        alpha: bound of the Bernoulli policy (paper: 0.8).
        optimizer: "adam" (the paper's; the only choice, kept so schedules can name it).
        lr, lr_step, lr_gamma: Adam lr (paper 0.01), ×``lr_gamma`` every ``lr_step``
            training iterations (paper 0.1 every 50k).
        literal_reward: use the printed reward sign a·(J1 − J0)/J0 (see the module doc).
        zoom_cost: subtracted from the reward of every zoom (ours, default 0: the paper has
            none); > 0 trades accuracy for speed.
        reward_clip: |R| limit (ours; J0 → 0 would otherwise blow R up).
        threshold: inference zooms where p ≥ threshold.
        pretrained: None, or a local torchvision resnet18 state-dict file for the segmenters'
            encoders ("imagenet" fails: nothing is downloaded).
    """

    def __init__(
        self,
        num_classes: int = 4,
        class_map: str | None = "bach",
        width: float = 1.0,
        levels: int = 1,
        alpha: float = 0.8,
        optimizer: AdamOnly = "adam",
        lr: float = 0.01,
        lr_step: int = 50_000,
        lr_gamma: float = 0.1,
        literal_reward: bool = False,
        zoom_cost: float = 0.0,
        reward_clip: float = 5.0,
        threshold: float = 0.5,
        pretrained: str | None = None,
        num_overlays: int = 4,
    ) -> None:
        super().__init__(num_classes=num_classes, class_map=class_map, num_overlays=num_overlays)
        self.automatic_optimization = False
        self._decisions: list[Tensor] = []

    def configure_models(self) -> None:
        hp = self.hparams
        if int(hp.levels) < 1:
            raise InputError(None, f"levels must be >= 1, got {hp.levels}")
        if not 0.5 < hp.alpha <= 1.0:
            raise InputError(None, f"alpha must be in (0.5, 1], got {hp.alpha}")
        self.levels = int(hp.levels)
        self.segmenters = self.build_segmenters(self.levels + 1)
        self.policies = nn.ModuleList(PolicyNet(hp.width) for _ in range(self.levels))

    def configure_metrics(self) -> None:
        super().configure_metrics()
        self.val_zoom = ZoomStats(self.num_classes, self.levels, self.ignore_index)
        self.test_zoom = ZoomStats(self.num_classes, self.levels, self.ignore_index)

    def configure_optimizers(self):
        """One optimizer per network (policies, then segmenters), each with its own decay."""
        settings = self.optimizer_settings()
        opts = [settings.build(n.parameters()) for n in [*self.policies, *self.segmenters]]
        return opts, [self.step_decay(o) for o in opts]

    def check_view(self, view) -> None:
        super().check_view(view)
        if int(getattr(view, "levels", 1)) != self.levels:
            raise InputError(
                None,
                f"RAZN has {self.levels} zoom level(s) but the data view "
                f"{type(view).__name__} gives {view.levels}; set both levels to the same value",
            )

    def forward(self, image: Tensor) -> Tensor:
        """f_θ0 on x0 alone (the no-zoom answer); the method's output is `batch_logits`."""
        return self.segmenters[0](self.normalize(image))

    # -------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        hp, L = self.hparams, self.levels
        images, labels, q = zoom_pyramid(batch, L)
        frac = [(lab != self.ignore_index).flatten(1).float().mean(1) for lab in labels]
        probs, actions, logpi = [], [], []
        for k in range(L):
            p = torch.sigmoid(self.policies[k](self.normalize(images[k])).float())
            pt = bounded(p, hp.alpha).clamp(1e-6, 1 - 1e-6)
            # a NaN policy (diverged weights) must reach the loss, whose check stops the run
            a = torch.bernoulli(pt.detach().nan_to_num(0.5))
            probs.append(p)
            actions.append(a)
            logpi.append(a * pt.log() + (1 - a) * (1 - pt).log())

        # Per-node selections: policies learn from every labelled node; f_k from the nodes
        # whose parent zoomed (k > 0) and that did not zoom themselves (k < L).
        pol_sel = [(frac[k] > 0).float() for k in range(L)]
        seg_sel = []
        for k in range(L + 1):
            sel = (frac[k] > 0).float()
            if k > 0:
                sel = sel * actions[k - 1].repeat_interleave(q[k] ** 2)
            if k < L:
                sel = sel * (1 - actions[k])
            seg_sel.append(sel)
        logits = [self._segment(k, images[k], seg_sel[k] > 0) for k in range(L + 1)]
        loss_j = [node_losses(logits[k], labels[k], self.ignore_index)[0] for k in range(L + 1)]

        rewards, final_j, final_w = zoom_rewards(
            [j.detach() for j in loss_j],
            [f.detach() for f in frac],
            actions,
            q,
            literal=hp.literal_reward,
            zoom_cost=hp.zoom_cost,
            clip=hp.reward_clip,
        )
        counts = self._global_sum(torch.stack([s.sum() for s in pol_sel + seg_sel]))
        world = self.trainer.world_size if self._trainer is not None else 1
        losses = []
        for k in range(L):
            denom = counts[k].clamp_min(1) / world
            losses.append(-(pol_sel[k] * rewards[k] * logpi[k]).sum() / denom)
        for k in range(L + 1):
            denom = counts[L + k].clamp_min(1) / world
            losses.append((seg_sel[k] * loss_j[k]).sum() / denom)

        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        for opt in opts:
            opt.zero_grad()
        self.manual_backward(torch.stack(losses).sum())
        for opt, n in zip(opts, counts.tolist(), strict=True):
            if n > 0:
                opt.step()
        # The schedule counts iterations, stepped or not (PyTorch warns when a scheduler steps
        # before its optimizer ever did: the case of a network no sample chose yet).
        scheds = self.lr_schedulers()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
            for sched in scheds if isinstance(scheds, list) else [scheds]:
                sched.step()

        self._log_train(final_j, final_w, loss_j, actions[0], probs[0], rewards[0])

    def _segment(self, k: int, image: Tensor, chosen: Tensor) -> Tensor:
        """f_k on every node, as before (the reward needs J0 and J1 of every field), but with
        BatchNorm running statistics from the nodes it trains on only (Algorithm 1 updates θ1
        only where a = 1, θ0 only where a = 0): a no-grad pass over those nodes updates them,
        then the pass with graph runs with momentum 0, which leaves them as they are."""
        net, x = self.segmenters[k], self.normalize(image)
        bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if chosen.any():
            with torch.no_grad():
                net(x[chosen])
        kept = [(m.momentum, m.num_batches_tracked.clone()) for m in bns]
        for m in bns:
            m.momentum = 0.0
        logits = net(x)
        for m, (momentum, tracked) in zip(bns, kept, strict=True):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)
        return logits

    def _log_train(self, final_j, final_w, loss_j, a, p, r) -> None:
        """Batch means over all ranks (one all-reduce), so every rank logs the same values."""
        t = torch.stack(
            [
                (final_w * final_j).sum(),
                final_w.sum(),
                loss_j[0].detach().sum(),
                loss_j[1].detach().sum(),
                torch.tensor(float(loss_j[1].numel()), device=a.device),
                a.sum(),
                p.detach().sum(),
                r.sum(),
                torch.tensor(float(a.numel()), device=a.device),
            ]
        )
        lw, w, j0, j1, n1, za, zp, rw, n = self._global_sum(t.float()).unbind()
        log = {
            "train/loss": lw / w.clamp_min(1e-12),  # the sampled composition's loss
            "train/loss_x0": j0 / n,
            "train/loss_x1": j1 / n1,
            "train/zoom_rate": za / n,
            "train/zoom_prob": zp / n,
            "train/reward": rw / za.clamp_min(1),  # mean reward of the zoomed fields
        }
        b = int(a.numel())
        self.log_dict(log, batch_size=b)
        self.log("train/loss_step", log["train/loss"], batch_size=b, prog_bar=True, logger=False)

    def _global_sum(self, t: Tensor) -> Tensor:
        if self._trainer is not None and self.trainer.world_size > 1:
            return self.trainer.strategy.reduce(t.float(), reduce_op="sum")
        return t.float()

    # ------------------------------------------------------------------- inference
    def batch_logits(self, batch: dict[str, Any]) -> Tensor:
        """The policy decides per field; zoomed fields get f_θ1's tiles, stitched at logit
        resolution (r× finer than f_θ0's) and resized once to the label grid."""
        images, _, q = zoom_pyramid(images_only(batch), self.levels)
        decisions: list[Tensor] = []
        nodes = torch.arange(images[0].shape[0], device=images[0].device)
        out = self._infer(0, nodes, images, q, decisions)
        self._decisions = decisions
        size = (batch["label"] if "label" in batch else batch["image"]).shape[-2:]
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)

    def _infer(self, k: int, nodes: Tensor, images, q, decisions: list[Tensor]) -> Tensor:
        """Logits of level-k ``nodes`` on a grid of (output size) · q_{k+1} · … · q_L, so zoomed
        children stitch into it exactly and unzoomed nodes are upsampled to it."""
        x = self.normalize(images[k][nodes])
        side = x.shape[-1] // FCNSegmenter.output_stride
        for n in q[k + 1 :]:
            side *= n
        if k < self.levels:
            zoom = torch.sigmoid(self.policies[k](x).float()) >= self.hparams.threshold
            decisions.append(zoom)  # each level is visited once per batch
        else:
            zoom = torch.zeros(len(nodes), dtype=torch.bool, device=x.device)
        out = x.new_zeros((len(nodes), self.num_classes, side, side))
        stay = ~zoom
        if stay.any():
            logits = self.segmenters[k](x[stay])
            if logits.shape[-1] != side:
                logits = F.interpolate(
                    logits, size=(side, side), mode="bilinear", align_corners=False
                )
            out[stay] = logits.to(out.dtype)
        if zoom.any():
            n = q[k + 1] ** 2
            children = (nodes[zoom][:, None] * n + torch.arange(n, device=x.device)).flatten()
            out[zoom] = from_tiles(self._infer(k + 1, children, images, q, decisions), q[k + 1])
        return out

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0):
        """The base's outputs, and ``zoom``: the policy's first-level decision per tile (1 =
        zoomed), which `SlideWriter` turns into each slide's zoom rate."""
        out = super().predict_step(batch, batch_idx, dataloader_idx)
        out["zoom"] = self._decisions[0].float()
        return out

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0):
        super().validation_step(batch, batch_idx, dataloader_idx)
        self.val_zoom.update(self._decisions, batch["label"])

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0):
        super().test_step(batch, batch_idx, dataloader_idx)
        self.test_zoom.update(self._decisions, batch["label"])

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_zoom("val", self.val_zoom)

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        zoom = self._log_zoom("test", self.test_zoom)
        self.test_scores.update(zoom)

    def _log_zoom(self, stage: str, stats: ZoomStats) -> dict[str, float]:
        """Zoom rate per level and per field class (``<stage>/zoom_rate…``)."""
        if not stats.update_called:
            return {}
        s = {k: v.cpu().reshape(-1) for k, v in stats.compute().items()}  # (1,) comes back 0-d
        stats.reset()
        out = {"zoom_rate": float(s["zoomed"][0] / s["seen"][0].clamp_min(1))}
        for k in range(1, self.levels):
            out[f"zoom_rate_l{k + 1}"] = float(s["zoomed"][k] / s["seen"][k].clamp_min(1))
        for c, name in enumerate(self.class_names):
            if s["class_seen"][c] > 0:
                out[f"zoom_rate/{class_key(name)}"] = float(
                    s["class_zoomed"][c] / s["class_seen"][c]
                )
        for key, value in out.items():  # identical on every rank after compute()
            self.log(f"{stage}/{key}", value, sync_dist=True)
        return out
