"""The LightningModule: a base network followed by the noise layer (paper Fig. 1a).

Training minimises the noisy-label NLL of the combined model plus the noise layer's regulariser; the
validation slice (noisy labels) reports the same NLL, which early stopping and model selection may use.
Testing always scores the base network alone, before Q, on clean labels: accuracy (torchmetrics) and the
soft confusion matrix of Eq. 4, c_ij = mean over test images of true class j of p(true = i | x).
Metrics are accumulated on the device and logged at epoch ends (no per-step host sync).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger
from torchmetrics.classification import BinaryAveragePrecision, BinaryPrecisionRecallCurve, MulticlassAccuracy

from . import plots
from .layers import LAYER_OPTIMIZERS, NoiseLayer
from .models import penultimate

# A schedule (optim.scheduler's _target_, partial) is called as fn(optimizer, total_steps=..., epochs=...,
# constant=(...)) and returns a per-step LambdaLR that scales each parameter group's own lr; the groups listed
# in ``constant`` keep their lr (a noise layer trained at its authors' own constant rate, e.g. VolMinNet's T).


def one_cycle(
    optimizer: torch.optim.Optimizer, total_steps: int, pct_start: float = 0.25, div: float = 25.0, constant=(),
    epochs: int | None = None,
):
    """Linear warm-up from lr/div over the first pct_start of the steps, then cosine decay to ~0 (the shape
    of torch's OneCycleLR, but keeping the ratio between groups, e.g. Q's larger lr); per step, whatever
    the epochs."""
    warm = max(1, int(pct_start * total_steps))

    def factor(step: int) -> float:
        if step < warm:
            return 1.0 / div + (1.0 - 1.0 / div) * step / warm
        t = min(1.0, (step - warm) / max(1, total_steps - warm))
        return 0.5 * (1.0 + math.cos(math.pi * t)) + 1e-3

    return _per_group(optimizer, factor, constant)


def _per_group(optimizer: torch.optim.Optimizer, factor, constant) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR scaling every group by ``factor(step)`` but those listed in ``constant``."""
    factors = [(lambda step: 1.0) if i in constant else factor for i in range(len(optimizer.param_groups))]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)


def multi_step(optimizer: torch.optim.Optimizer, total_steps: int, epochs: int, milestones=(), gamma: float = 0.1,
               constant=()):
    """torch's MultiStepLR on epochs, stepped per batch: lr x gamma once each milestone epoch is reached
    (milestones [40, 80]: epochs 0-39 at lr, 40-79 at lr x gamma, 80- at lr x gamma^2)."""
    per_epoch = max(1, total_steps // max(1, epochs))
    marks = sorted(int(m) for m in milestones)

    def factor(step: int) -> float:
        epoch = step // per_epoch
        return gamma ** sum(epoch >= m for m in marks)

    return _per_group(optimizer, factor, constant)


class Optimizers(torch.optim.Optimizer):
    """Several optimisers stepped as one: each keeps its own parameter groups (shared with this one, so a
    schedule scales them all) and state. For a noise layer with an optimiser of its own (VolMinNet's T:
    Adam while the network trains by SGD)."""

    def __init__(self, inner: list[torch.optim.Optimizer]):
        self.inner = inner
        super().__init__([p for o in inner for g in o.param_groups for p in g["params"]], {})
        self.param_groups = [g for o in inner for g in o.param_groups]

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self.inner:
            o.step()
        return loss

    def state_dict(self) -> dict:
        return {"inner": [o.state_dict() for o in self.inner]}

    def load_state_dict(self, state_dict: dict) -> None:
        for o, s in zip(self.inner, state_dict["inner"], strict=True):
            o.load_state_dict(s)
        self.param_groups = [g for o in self.inner for g in o.param_groups]


class NoisyLabelModule(pl.LightningModule):
    def __init__(
        self,
        net: torch.nn.Module,
        noise_layer: NoiseLayer,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        q_true: np.ndarray | None = None,
        num_classes: int | None = None,
        channels_last: bool = False,
        net_lr: float | None = None,
    ):
        super().__init__()
        self.net, self.noise = net, noise_layer
        self.net_lr = net_lr  # the base net's learning rate for this training (None: the optimiser's)
        self.optimizer_fn, self.scheduler_fn = optimizer, scheduler
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        # The base net may have an extra "outlier" output; test labels and accuracy use the first K.
        k = num_classes or noise_layer.num_classes
        self.num_classes = k
        self.register_buffer("q_true", None if q_true is None else torch.as_tensor(q_true, dtype=torch.float32))
        self.test_acc = MulticlassAccuracy(num_classes=k, average="micro")
        self.test_results: dict = {}
        self._scores, self._is_inlier = [], []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # -- training -------------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self.noise.frozen = self.current_epoch < self.noise.warmup_epochs

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        nll = self.noise.nll(logits, y)
        loss = nll + self.noise.regulariser(logits)
        self.log("train/nll", nll, on_step=False, on_epoch=True, batch_size=len(y))
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.noise.project_()  # the paper's projection of Q back onto probability matrices

    def on_train_epoch_end(self) -> None:
        q = self.noise.q()
        if q is not None and self.q_true is not None and q.shape == self.q_true.shape:
            q_err = (q.detach() - self.q_true).abs().sum(0).mean()
            self.log("train/q_error", q_err, prog_bar=True)
        if q is not None and self.q_true is not None and self._image_logger_due():
            self._log_q_image(q.detach().cpu().numpy())

    def _image_logger_due(self) -> bool:
        # W&B only (CSV cannot hold images); ten images per run, and the last epoch's.
        every = max(1, (self.trainer.max_epochs or 10) // 10)
        last = self.current_epoch + 1 == self.trainer.max_epochs
        return any(isinstance(lg, WandbLogger) for lg in self.loggers) and (self.current_epoch % every == 0 or last)

    def _log_q_image(self, q: np.ndarray) -> None:
        fig = plots.q_heatmaps(self.q_true.cpu().numpy(), q, f"epoch {self.current_epoch}")
        image = plots.to_array(fig)
        for lg in self.loggers:
            if isinstance(lg, WandbLogger):
                lg.log_image("Q", [image], step=self.global_step)

    # -- validation: noisy labels, combined model -----------------------------------------------------
    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.log("val/nll", self.noise.nll(logits, y), on_epoch=True, prog_bar=True, batch_size=len(y))
        # accuracy of the combined model's p(noisy | x) on the noisy labels (a selection rule of the peers')
        self.log("val/acc", (self.noisy_probs(logits).argmax(1) == y).float().mean(), on_epoch=True, batch_size=len(y))

    # -- test: clean labels, base model ---------------------------------------------------------------
    def on_test_epoch_start(self) -> None:
        self._conf_sum, self._count = None, torch.zeros(self.num_classes, device=self.device)

    def test_step(self, batch, batch_idx):
        x, y = batch
        probs = torch.softmax(self.net(x).float(), dim=1)
        k = self.num_classes
        inlier = y < k  # test label K marks an outlier image (outlier noise only)
        if inlier.any():  # a batch of the test set's outlier tail has none
            self.test_acc.update(probs[inlier, :k], y[inlier])
        if self._conf_sum is None:
            self._conf_sum = torch.zeros(probs.shape[1], k, device=self.device)
        self._conf_sum.index_add_(1, y[inlier], probs[inlier].T)
        self._count += torch.bincount(y[inlier], minlength=k)
        # Scores for telling inliers from outliers: 1 - p(outlier) for the K+1-output model, the max
        # softmax probability for a K-output one (the usual baseline).
        score = 1.0 - probs[:, k] if probs.shape[1] > k else probs.max(dim=1).values
        self._scores.append(score)
        self._is_inlier.append(inlier)

    def on_test_epoch_end(self) -> None:
        acc = self.test_acc.compute()
        self.log("test/error", 1.0 - acc)
        self.test_results = {
            "test_error": float(1.0 - acc),
            "confusion": (self._conf_sum / self._count.clamp_min(1)).cpu().numpy(),  # Eq. 4
        }
        is_inlier = torch.cat(self._is_inlier).long()
        if (is_inlier == 0).any():
            scores = torch.cat(self._scores)
            ap = BinaryAveragePrecision()(scores, is_inlier)
            precision, recall, _ = BinaryPrecisionRecallCurve()(scores, is_inlier)
            keep = np.unique(np.linspace(0, len(recall) - 1, 101).round().astype(int))  # ~100 points suffice
            self.log("test/inlier_ap", ap)
            self.test_results["inlier_ap"] = float(ap)
            self.test_results["pr_curve"] = {"precision": precision.cpu().numpy()[keep],
                                             "recall": recall.cpu().numpy()[keep]}
        self._scores, self._is_inlier = [], []

    def noisy_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """p(noisy | x) of the combined model: the base net's softmax through Q (Eq. 2), or the softmax alone."""
        p = torch.softmax(logits.float(), dim=1)
        q = self.noise.q()
        return p if q is None else p @ q.detach().T.to(p)

    # -- predict: p(noisy | x) of the combined model, and the base net's penultimate features -----------
    predict_outputs: tuple[str, ...] = ("probs",)  # set by the training factory for one predict pass

    def predict_step(self, batch, batch_idx) -> dict:
        x, _ = batch
        seen = []
        hook = None
        if "features" in self.predict_outputs:  # the input of the net's last linear layer
            hook = penultimate(self.net).register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        try:
            logits = self.net(x)
        finally:
            if hook is not None:
                hook.remove()
        out = {"probs": self.noisy_probs(logits)}
        if seen:
            out["features"] = seen[0].float().flatten(1)
        return out

    # -- optimisation ---------------------------------------------------------------------------------
    def configure_optimizers(self):
        groups = [{"params": [p for p in self.net.parameters() if p.requires_grad],
                   **({"lr": self.net_lr} if self.net_lr is not None else {})}]
        q_params = [p for p in self.noise.parameters() if p.requires_grad]
        q_group = {"params": q_params, "weight_decay": 0.0, **({"lr": self.noise.lr} if self.noise.lr else {})}
        if q_params and self.noise.optimizer is not None:  # Q by an optimiser of its own, stepped with the network's
            opt = Optimizers([self.optimizer_fn(groups), LAYER_OPTIMIZERS[self.noise.optimizer]([q_group])])
        else:
            # Q has its own learning rate and no weight decay (decay would pull it off the simplex).
            opt = self.optimizer_fn(groups + ([q_group] if q_params else []))
        if self.scheduler_fn is None:
            return opt
        constant = {"constant": (1,)} if q_params and not self.noise.scheduled else {}  # Q is group 1
        sched = self.scheduler_fn(opt, total_steps=int(self.trainer.estimated_stepping_batches),
                                  epochs=int(self.trainer.max_epochs), **constant)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
