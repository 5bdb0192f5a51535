"""Seeded, seconds-long training of the zoo's digits models (Adam, mini-batches, CPU).

Used by ``qcal.zoo.zoo`` on first use of a model; not a general training loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["TrainConfig", "evaluate", "train_classifier"]

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class TrainConfig:
    """How a digits model is trained.

    Attributes:
        epochs: passes over the training split.
        lr: Adam's learning rate (cosine-decayed to 0 over the run).
        batch_size: images per step.
        weight_decay: Adam's L2 penalty.
        seed: seeds the initial weights and the batch order.
    """

    epochs: int = 30
    lr: float = 3e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    seed: int = 0


def train_classifier(model: nn.Module, x: Tensor, y: Tensor, config: TrainConfig = TrainConfig(),
                     *, progress: Progress | None = None) -> nn.Module:
    """Train ``model`` in place with cross-entropy; deterministic in ``config.seed``.

    The caller builds the model inside the same seeded scope (see ``qcal.zoo.zoo``) so that
    initial weights are seeded too. The global RNG state is left as it was. Training runs
    on one intra-op thread (restored afterwards): these models are too small to gain from
    more, a loaded machine makes extra threads much slower, and a fixed thread count keeps
    the float reductions, hence the weights, the same on machines with any core count.

    Args:
        model: a freshly built classifier returning logits.
        x: training inputs (N, ...).
        y: int64 class labels (N,).
        config: epochs, learning rate, batch size, seed.
        progress: optional callback ``progress(fraction, message)`` once per epoch.

    Returns:
        The same model, in eval mode.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(model, x, y, config, progress)
    finally:
        torch.set_num_threads(threads)


def _train(model: nn.Module, x: Tensor, y: Tensor, config: TrainConfig, progress: Progress | None) -> nn.Module:
    gen = torch.Generator().manual_seed(config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = -(-len(x) // config.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), config.batch_size):
            idx = order[i : i + config.batch_size]
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if progress is not None:
            progress((epoch + 1) / config.epochs, f"epoch {epoch + 1}/{config.epochs}, loss {total / len(x):.4f}")
    return model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``, in [0, 1].

    Args:
        model: a classifier returning (B, classes) logits; run as is (put it in eval mode).
        x: inputs (N, ...).
        y: int64 labels (N,).
        batch_size: rows per forward pass.

    Returns:
        The fraction of rows whose arg-max logit equals the label.
    """
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(f"need as many labels as inputs (>0), got {len(x)} inputs and {len(y)} labels")
    correct = sum(
        int((model(x[i : i + batch_size]).argmax(dim=1) == y[i : i + batch_size]).sum())
        for i in range(0, len(x), batch_size)
    )
    return correct / len(y)
