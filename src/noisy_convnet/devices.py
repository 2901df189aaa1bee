"""Where a training runs and in which memory layout: the one table of what was measured faster."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

# The memory layout of a model when data.channels_last is null: channels-last for the models measured
# faster in it with `python scripts/bench.py --model M [trainer=gpu]` (img/s channels-last / NCHW). On the
# 2-core CPU: convnet_small 1.42 (median of six runs), convnet_cifar 1.12. On an H100 (bf16): convnet_cifar
# 1.11, convnet_small 0.86 (NCHW stays); resnet18 and alexnet, not measured, take the usual choice for tensor
# cores.
CHANNELS_LAST = {
    "cpu": ("noisy_convnet.models.SmallConvNet", "noisy_convnet.models.ConvNetCifar"),
    "cuda": ("noisy_convnet.models.ConvNetCifar", "noisy_convnet.models.resnet18", "noisy_convnet.models.alexnet"),
}


def training_device(cfg: DictConfig) -> torch.device:
    """Where the Trainer will train: its accelerator, or a GPU when there is one under "auto"."""
    accelerator = str((cfg.trainer or {}).get("accelerator", "auto"))
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if on_gpu else "cpu")


def channels_last(cfg: DictConfig) -> bool:
    """data.channels_last when set; else what CHANNELS_LAST says for this device and model."""
    if cfg.data.channels_last is not None:
        return bool(cfg.data.channels_last)
    return cfg.model.get("_target_") in CHANNELS_LAST.get(training_device(cfg).type, ())
