"""The protocol of a run's trainings, typed: what the training factory (factory.py, fitting.py) takes of the
config, and nothing of Hydra.

``Spec.of(cfg)`` reads it once from the run's validated config: the seed, the network and optimiser nodes,
the Lightning Trainer's settings, early stopping (patience, the selection rule), the data loading (batch
size, shift, workers, memory layout), the device, and each role's own settings (``protocol.<role>``: a
peer's stage with epochs, an optimiser and a selection rule of its own). ``Spec.settings(role)`` gives one
training's ``Settings``: the role's where it gives them, else the estimator's choice of early stopping,
else the run's.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from .config import ROLES
from .devices import channels_last, training_device


def _named(node: dict | None) -> dict | None:
    if not node:
        return None
    return {"name": str(node.get("_target_", "")).rsplit(".", 1)[-1],
            **{k: v for k, v in node.items() if not k.startswith("_")}}


@dataclass(frozen=True)
class Settings:
    """How one training runs: the run's protocol, or protocol.<role>'s where it gives a value."""

    role: str | None
    epochs: int
    optim: dict  # {optimizer: {_target_...}, scheduler: {...} | None}
    early_stopping: bool  # keep the best noisy-validation epoch (else the last)
    selection: str  # nll | accuracy: what "best" means

    def describe(self, model: dict) -> dict:
        """The record's account of it: network (its class and settings: an MLP's hidden sizes and dropout),
        optimiser, schedule, epochs, which epoch is tested."""
        return {"role": self.role or "run", "model": _named(model),
                "optimizer": _named(self.optim.get("optimizer")), "scheduler": _named(self.optim.get("scheduler")),
                "epochs": self.epochs,
                "tested": f"best noisy-validation {self.selection}" if self.early_stopping else "last epoch",
                }


@dataclass(frozen=True)
class Spec:
    """What the run's trainings are made of (plain values, resolved: nodes keep their ``_target_``)."""

    seed: int  # every training starts from the weights this seed draws
    model: dict  # the network's node (conf/model)
    optim: dict  # {optimizer, scheduler} (conf/optim)
    trainer: dict  # the Lightning Trainer's settings (conf/trainer): max_epochs, accelerator, precision...
    early_stopping: bool  # the run's: test the best noisy-validation epoch
    patience: int | None  # epochs without a better one before stopping; None: all epochs
    selection: str  # nll | accuracy
    roles: dict  # role -> {epochs, optim, early_stopping, selection} (None where the run's hold)
    estimate_on: str  # train | all: the images T is estimated on
    batch_size: int
    shift: int  # pixels of random translation
    num_workers: int  # DataLoader workers (image folders)
    channels_last: bool  # the memory layout the nets train in
    device: str  # cpu | cuda: where the Trainer trains
    estimator: str  # q._target_: named in a line that refuses an estimator's call

    @classmethod
    def of(cls, cfg: DictConfig) -> Spec:
        c = OmegaConf.to_container(cfg, resolve=True)
        protocol, data = c["protocol"], c["data"]
        return cls(
            seed=int(c["seed"]), model=c["model"], optim=c["optim"], trainer=c["trainer"] or {},
            early_stopping=bool(c["early_stopping"]), patience=c["patience"], selection=str(c["selection"]),
            roles={r: protocol.get(r) or {} for r in ROLES}, estimate_on=str(protocol["estimate_on"]),
            batch_size=int(data["batch_size"]), shift=int(data["shift"]), num_workers=int(data["num_workers"]),
            channels_last=channels_last(cfg), device=training_device(cfg).type,
            estimator=str((c.get("q") or {}).get("_target_")),
        )

    @property
    def max_epochs(self) -> int:
        return int(self.trainer["max_epochs"])

    @property
    def fast_dev_run(self) -> bool:
        return bool(self.trainer.get("fast_dev_run"))

    def settings(self, role: str | None, early_stopping: bool) -> Settings:
        """One training's settings: protocol.<role>'s where it gives them, else ``early_stopping`` (the
        estimator's choice, or the run's), else the run's."""
        own = (self.roles.get(role) if role is not None else None) or {}
        es = early_stopping if own.get("early_stopping") is None else bool(own["early_stopping"])
        return Settings(role, int(own.get("epochs") or self.max_epochs),
                        self.optim if own.get("optim") is None else own["optim"], es,
                        str(own.get("selection") or self.selection))
