"""Data sets a case can name under ``data: {kind: ...}``, and minibatching.

A data factory returns a :class:`TensorData` on the CPU; the runner moves it to the run's
device once. Randomness comes from the context's generator, so a seed fixes the data.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator, Literal

import torch

from stability_bench.components import BuildContext, Count, check_widths, declares
from stability_bench.registry import Registry

DATA: Registry = Registry("data")


@dataclass
class TensorData:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device | str) -> "TensorData":
        return TensorData(self.x.to(device), self.y.to(device))

    def digest(self) -> str:
        """A short hash of the examples (values, dtypes, shapes): what a baseline compares to
        know it was recorded on the same data — another copy of a dataset (the official
        CIFAR-10 release or a subset file) or another generator gives other trajectories."""
        h = hashlib.blake2b(digest_size=8)
        for t in (self.x, self.y):
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()


def _generator(ctx: BuildContext, seed: int | None) -> torch.Generator:
    """The run's generator, or a fixed one when the data spec pins its own seed."""
    return ctx.generator if seed is None else torch.Generator().manual_seed(seed)


@DATA.register("gaussian")
@declares(targets="real")
def gaussian(ctx: BuildContext, *, n: Count, in_features: Count, out_features: Count = 1,
             seed: int | None = None) -> TensorData:
    """x, y ~ N(0, 1) independently (Bai Li's 64 points); a target with no structure."""
    g = _generator(ctx, seed)
    x = torch.randn(n, in_features, generator=g, dtype=torch.float64)
    y = torch.randn(n, out_features, generator=g, dtype=torch.float64)
    return TensorData(x.to(ctx.dtype), y.to(ctx.dtype))


@DATA.register("teacher")
@declares(targets="real", check=check_widths)
def teacher(ctx: BuildContext, *, n: Count, widths: list[Count], activation: Literal["tanh", "relu"] = "tanh",
            noise: float = 0.0, outliers: float = 0.0, outlier_scale: float = 10.0,
            seed: int | None = None) -> TensorData:
    """Regression on a random teacher MLP (weights ~ N(0, 1/fan_in)); inputs ~ N(0, 1).
    ``widths: [14, 32, 4]`` gives 14 features and 4 outputs; ``noise`` adds N(0, noise²)
    to every target; a fraction ``outliers`` of the examples get N(0, outlier_scale²) added
    instead — the "unlucky" examples that make minibatch losses spike (seed 000)."""
    g = _generator(ctx, seed)
    act = {"tanh": torch.tanh, "relu": torch.relu}[activation]
    x = torch.randn(n, widths[0], generator=g, dtype=torch.float64)
    h = x
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        w = torch.randn(fan_in, fan_out, generator=g, dtype=torch.float64) / fan_in ** 0.5
        h = h @ w
        if i < len(widths) - 2:
            h = act(h)
    y = h + noise * torch.randn(h.shape, generator=g, dtype=torch.float64)
    n_out = int(round(outliers * n))
    y[:n_out] += outlier_scale * torch.randn(n_out, h.shape[1], generator=g, dtype=torch.float64)
    return TensorData(x.to(ctx.dtype), y.to(ctx.dtype))


CIFAR10_SIZES = {"train": 50_000, "test": 10_000}  # the official release


def _cifar10_check(params: dict) -> list[tuple[str, str]]:
    """A subset beyond the official release's split; a smaller local file is checked
    when it is read (the run's setup error names this key too)."""
    subset, split = params.get("subset"), params.get("split", "train")
    size = CIFAR10_SIZES.get(split)
    if isinstance(subset, int) and size is not None and subset > size:
        return [("subset", f"subset {subset} is larger than CIFAR-10's {split} split ({size:,} images)")]
    return []


def _cifar10_prepare(params: dict) -> None:
    """Before the runs: fetch CIFAR-10 on first use (never inside a run)."""
    from stability_bench.components.cifar10 import ensure_cifar10

    ensure_cifar10(params.get("data_dir"))


@DATA.register("cifar10")
@declares(targets="labels", check=_cifar10_check, prepare=_cifar10_prepare)
def cifar10(ctx: BuildContext, *, subset: Count | None = None, split: Literal["train", "test"] = "train",
            data_dir: str | None = None, standardize: bool = True) -> TensorData:
    """CIFAR-10, flattened (CHW order), scaled to [0, 1], centred and divided by the
    per-feature std. Reads the official ``cifar-10-batches-py`` release or the offline
    ``cifar10-5k.npz``; a missing data set is an error that says where it looked. Fetched
    on first use before the runs start (``prepare``), never here."""
    from stability_bench.components.cifar10 import load_cifar10

    x, y = load_cifar10(data_dir, subset=subset, split=split, standardize=standardize)
    return TensorData(torch.as_tensor(x).to(ctx.dtype), torch.as_tensor(y, dtype=torch.int64))


@DATA.register("modular_addition")
@declares(targets="labels")
def modular_addition(ctx: BuildContext, *, modulus: Count, operands: Count = 2) -> TensorData:
    """Every token sequence ``a b … =`` of ``operands`` residues mod ``modulus`` ("=" is token
    ``modulus``, so the vocabulary is modulus + 1), labelled with the sum mod ``modulus``:
    a task the project generates itself, deterministic and complete (modulus**operands
    examples), for the decoder Transformer."""
    from stability_bench.components.transformer import modular_sums

    x, y = modular_sums(modulus, operands)
    return TensorData(x, y)


@DATA.register("none")
def none(ctx: BuildContext) -> TensorData:
    """No data: one empty example, for models that are their own objective (quadratic)."""
    return TensorData(torch.zeros(1, 0, dtype=ctx.dtype), torch.zeros(1, 0, dtype=ctx.dtype))


class Batches:
    """Endless minibatches over ``data``: reshuffled every epoch when ``shuffle``; the short
    last batch of an epoch is kept unless ``drop_last`` (seed 003's spikes come from it)."""

    def __init__(self, data: TensorData, size: int | None, shuffle: bool, drop_last: bool,
                 generator: torch.Generator):
        self.data, self.shuffle, self.drop_last, self.generator = data, shuffle, drop_last, generator
        n = len(data)
        self.size = n if size is None or size >= n else size
        self.per_epoch = n // self.size if drop_last else -(-n // self.size)
        if self.per_epoch == 0:
            raise ValueError(f"batch size {size} with drop_last leaves no batch of {n} examples")

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        data, n = self.data, len(self.data)
        if self.size == n and not self.shuffle:
            while True:  # full batch: the same tensors every step, no copies
                yield data.x, data.y
        while True:
            if self.shuffle:
                order = torch.randperm(n, generator=self.generator).to(data.x.device)
                x, y = data.x[order], data.y[order]
            else:
                x, y = data.x, data.y
            for b in range(self.per_epoch):
                yield x[b * self.size:(b + 1) * self.size], y[b * self.size:(b + 1) * self.size]
