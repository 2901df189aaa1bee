"""Training speed: the framework's path against a plain PyTorch loop, the other memory layout, the cost
of a learned Q, and N single-thread processes at once (how a CPU sweep runs its cells).

    python scripts/bench.py [--model convnet_cifar] [--shape 3 32 32] [--steps 60] [--batch-size 128]

Trains the same model on the same in-memory data (random uint8 tensors of the given shape: a speed test
needs no real images) for a fixed number of steps and prints one JSON line:
  channels_last           the layout a run of this config uses (data.channels_last, or the default
                          devices.channels_last picks for this device and model)
  framework_images_per_s  the real path in that layout: the composed config, TensorDataModule,
                          NoisyLabelModule and a Lightning Trainer, as train.py builds them (q=none)
  other_layout_images_per_s  the same in the other layout (NCHW <-> channels-last)
  raw_images_per_s        a plain loop: same model, optimizer, schedule, batch size and layout
  ratio                   framework / raw
  learned_q_overhead      1 - (learned-Q img/s) / (no-noise-layer img/s), both on the framework path
  parallel_images_per_s   --parallel processes (default: one per core, on a CPU) training at once with one
                          torch thread each, their img/s added (0: not measured)
  device                  what it ran on
The first ``--warmup`` steps of each are not timed, and each figure is the best of ``--repeats`` runs
(the three are interleaved, so none is favoured by running while the machine is cold).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import time

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from noisy_convnet.config import compose
from noisy_convnet.data import TensorDataModule
from noisy_convnet.datasets import Split
from noisy_convnet.devices import channels_last
from noisy_convnet.layers import NoiseLayer
from noisy_convnet.module import NoisyLabelModule


class StepTimer(pl.Callback):
    """Wall time from the end of step ``warmup`` to the end of the last step."""

    def __init__(self, warmup: int):
        self.warmup, self.t0, self.t1, self.steps = warmup, None, None, 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.steps += 1
        if self.steps == self.warmup:
            _sync()
            self.t0 = time.perf_counter()

    def on_train_end(self, trainer, module):
        _sync()
        self.t1 = time.perf_counter()


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def framework(cfg, data: Split, q: str, steps: int, warmup: int, batch: int, cl: bool) -> float:
    k = 10
    pl.seed_everything(0, verbose=False)
    dm = TensorDataModule(data, Split(data.x[:0], data.y[:0]), data, batch, 0, 0, cl)
    net = instantiate(cfg.model, in_shape=tuple(data.x.shape[1:]), num_classes=k)
    # conf/q/learned.yaml: the recipe a run uses; q=none: no noise layer
    layer = instantiate(cfg.q).layer(k, {}) if q == "learned" else NoiseLayer(k)
    module = NoisyLabelModule(net, layer, instantiate(cfg.optim.optimizer), instantiate(cfg.optim.scheduler),
                              num_classes=k, channels_last=cl)
    timer = StepTimer(warmup)
    trainer = instantiate(cfg.trainer, max_steps=steps, max_epochs=-1, logger=False, callbacks=[timer],
                          enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0)
    trainer.fit(module, dm)
    return (steps - warmup) * batch / (timer.t1 - timer.t0)


def raw(cfg, data: Split, steps: int, warmup: int, batch: int, cl: bool) -> float:
    """The loop one would write by hand: batches sliced from device tensors, no framework."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    net = instantiate(cfg.model, in_shape=tuple(data.x.shape[1:]), num_classes=10).to(device)
    cl = torch.channels_last if cl else torch.contiguous_format
    net = net.to(memory_format=cl)
    opt = instantiate(cfg.optim.optimizer)(net.parameters())
    sched = instantiate(cfg.optim.scheduler)(opt, total_steps=steps)
    x, y = data.x.to(device), data.y.to(device)
    mean, std = x.float().mean() / 255, x.float().std() / 255
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )
    n = len(y)
    for step in range(steps):
        if step == warmup:
            _sync()
            t0 = time.perf_counter()
        idx = torch.randint(0, n, (batch,), device=device)
        xb = ((x[idx].float() / 255 - mean) / std).contiguous(memory_format=cl)
        with amp:
            loss = torch.nn.functional.cross_entropy(net(xb).float(), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    _sync()
    return (steps - warmup) * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="convnet_cifar")
    ap.add_argument("--shape", type=int, nargs=3, default=[3, 32, 32])
    ap.add_argument("--n", type=int, default=10_000, help="images in the in-memory set")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=None, help="single-thread processes at once (default: cores)")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. trainer=gpu data.channels_last=true")
    a = ap.parse_args()
    cfg, data = _setup(a)
    cl = channels_last(cfg)
    fw = other = rw = lq = 0.0
    for _ in range(a.repeats):
        fw = max(fw, framework(cfg, data, "none", a.steps, a.warmup, a.batch_size, cl))
        other = max(other, framework(cfg, data, "none", a.steps, a.warmup, a.batch_size, not cl))
        rw = max(rw, raw(cfg, data, a.steps, a.warmup, a.batch_size, cl))
        lq = max(lq, framework(cfg, data, "learned", a.steps, a.warmup, a.batch_size, cl))
    on_gpu = torch.cuda.is_available()
    n_par = a.parallel if a.parallel is not None else (0 if on_gpu else os.cpu_count() or 1)
    par = 0.0
    if n_par > 1:
        with multiprocessing.get_context("spawn").Pool(n_par) as pool:
            par = sum(pool.map(_single_thread, [a] * n_par))
    dev = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    print(json.dumps({
        "channels_last": cl, "framework_images_per_s": round(fw, 1), "other_layout_images_per_s": round(other, 1),
        "raw_images_per_s": round(rw, 1), "ratio": round(fw / rw, 3), "learned_q_overhead": round(1 - lq / fw, 3),
        "parallel_processes": n_par, "parallel_images_per_s": round(par, 1), "device": dev, "model": a.model,
        "shape": a.shape, "batch_size": a.batch_size, "steps": a.steps, "repeats": a.repeats,
    }))


def _setup(a):
    cfg = compose([f"model={a.model}", "q=learned", "run_dir=/tmp/bench", *a.overrides])
    g = torch.Generator().manual_seed(0)
    data = Split(torch.randint(0, 256, (a.n, *a.shape), dtype=torch.uint8, generator=g),
                 torch.randint(0, 10, (a.n,), generator=g))
    return cfg, data


def _single_thread(a) -> float:
    """One of the parallel processes: the framework path with one torch thread, the run's layout."""
    torch.set_num_threads(1)
    cfg, data = _setup(a)
    return framework(cfg, data, "none", a.steps, a.warmup, a.batch_size, channels_last(cfg))


if __name__ == "__main__":
    main()
