"""A small quantized checkpoint to explain: torch's own eager-mode conversion of a digits CNN.

The layer names are those of users' questions (``conv_3x3_32a``: Conv2d(1, 40, 3)). The
model trains for a few seconds on scikit-learn's bundled digits (8x8 images, no download),
is calibrated with torch's default qconfig of the chosen engine and converted; the file
holds ``state_dict()`` of the converted model, the thing users arrive with.

This is an oracle-side helper: it uses ``torch.ao.quantization`` on purpose, since the point
is a checkpoint exactly as torch writes it. qcal's integer engine does not import it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch
from torch import nn

from qcal.paths import data_dir

__all__ = [
    "EXAMPLE_BACKENDS",
    "ExampleNet",
    "build_example_state_dict",
    "data_dir",
    "example_checkpoint",
]

EXAMPLE_BACKENDS: tuple[str, ...] = ("fbgemm", "qnnpack")


class ExampleNet(nn.Module):
    """quant -> conv_3x3_32a -> relu -> conv_3x3_32b+relu -> flatten -> fc -> dequant."""

    def __init__(self) -> None:
        super().__init__()
        qa = torch.ao.quantization
        self.quant = qa.QuantStub()
        self.conv_3x3_32a = nn.Conv2d(1, 40, 3)  # (B, 1, 8, 8) -> (B, 40, 6, 6)
        self.relu_a = nn.ReLU()
        self.conv_3x3_32b = nn.Conv2d(40, 32, 3)  # (B, 40, 6, 6) -> (B, 32, 4, 4)
        self.relu_b = nn.ReLU()
        self.fc = nn.Linear(32 * 4 * 4, 10)  # (B, 512) -> (B, 10)
        self.dequant = qa.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu_a(self.conv_3x3_32a(self.quant(x)))
        x = self.relu_b(self.conv_3x3_32b(x))
        return self.dequant(self.fc(x.flatten(1)))


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    # centred on 0 (range -1..1), so the input quantizer has a zero point inside 0..255
    return (x - 0.5) / 0.5, torch.tensor(digits.target)


def build_example_state_dict(backend: str = "fbgemm", *, seed: int = 0, epochs: int = 1) -> dict:
    """Train, calibrate and convert :class:`ExampleNet` with torch's default qconfig.

    ``conv_3x3_32a`` is left unfused from its ReLU, so its output quantization covers signed
    pre-activations (a non-zero output zero point, as in users' files); ``conv_3x3_32b`` is
    fused with its ReLU (output zero point 0).

    Args:
        backend: "fbgemm" (per-channel weights, reduce_range activations) or "qnnpack"
            (per-tensor weights, full-range activations).
        seed: the RNG seed (the caller's RNG state is left untouched).
        epochs: training epochs over the digits (under a second each).

    Returns:
        The converted model's ``state_dict()``.
    """
    if backend not in EXAMPLE_BACKENDS:
        raise ValueError(
            f"unknown backend {backend!r}; expected one of: {', '.join(EXAMPLE_BACKENDS)}"
        )
    qa = torch.ao.quantization
    x, y = _digits()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ExampleNet()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(epochs):
            for idx in torch.randperm(len(x)).split(128):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
        model.eval()
        previous = torch.backends.quantized.engine
        torch.backends.quantized.engine = backend
        try:
            fused = qa.fuse_modules(model, [["conv_3x3_32b", "relu_b"]])
            fused.qconfig = qa.get_default_qconfig(backend)
            prepared = qa.prepare(fused)
            with torch.no_grad():
                for batch in x[:256].split(128):
                    prepared(batch)
            converted = qa.convert(prepared)
        finally:
            torch.backends.quantized.engine = previous
    return converted.state_dict()


def example_checkpoint(backend: str = "fbgemm") -> Path:
    """The path of the example checkpoint for ``backend``, generated on first use.

    The file is ``<data dir>/example_checkpoint_<backend>.pt`` (see :func:`data_dir`),
    written atomically (a temporary file, then ``os.replace``) so concurrent callers never
    read half a file.

    Example:
        >>> import qcal
        >>> qcal.explain(example_checkpoint("qnnpack")).role.value_counts()["requant"]  # doctest: +SKIP
        3
    """
    if backend not in EXAMPLE_BACKENDS:
        raise ValueError(
            f"unknown backend {backend!r}; expected one of: {', '.join(EXAMPLE_BACKENDS)}"
        )
    path = data_dir() / f"example_checkpoint_{backend}.pt"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = build_example_state_dict(backend)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with tmp.open("wb") as f:  # a file object: the archive's inner folder is "archive"
            torch.save(state_dict, f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
