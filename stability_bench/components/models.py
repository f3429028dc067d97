"""Models a case can name under ``model: {kind: ...}``."""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from stability_bench.components import BuildContext, Count, check_widths, declares
from stability_bench.registry import Registry

MODELS: Registry = Registry("model")


def _init_fan_in(module: nn.Module, generator: torch.Generator) -> None:
    """Weights ~ N(0, 1/fan_in), biases zero (Cohen et al. 2022, App. G)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            with torch.no_grad():
                layer.weight.normal_(0.0, 1.0 / math.sqrt(layer.in_features), generator=generator)
                if layer.bias is not None:
                    layer.bias.zero_()


@MODELS.register("linear")
def linear(ctx: BuildContext, *, in_features: Count, out_features: Count = 1, bias: bool = True,
           init: Literal["torch", "fan_in"] = "torch") -> nn.Module:
    """A single affine layer (Bai Li's perceptron). ``init: torch`` is nn.Linear's default."""
    model = nn.Linear(in_features, out_features, bias=bias)
    if init == "fan_in":
        _init_fan_in(model, ctx.generator)
    return model


_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def _quadratic_check(params: dict) -> list[tuple[str, str]]:
    eigenvalues, x0 = params.get("eigenvalues"), params.get("x0")
    problems = [] if eigenvalues else [("eigenvalues", "needs at least one eigenvalue")]
    if isinstance(x0, list) and isinstance(eigenvalues, list) and len(x0) != len(eigenvalues):
        problems.append(("x0", f"x0 has {len(x0)} entries but there are {len(eigenvalues)} eigenvalues"))
    return problems


@MODELS.register("mlp")
@declares(check=check_widths)
def mlp(ctx: BuildContext, *, widths: list[Count], activation: Literal["relu", "tanh"] = "relu",
        init: Literal["torch", "fan_in"] = "torch", bias: bool = True) -> nn.Module:
    """Fully connected network; ``widths`` lists every layer, input and output included
    (``[14, 100, 40, 4]``). No activation after the last layer."""
    if len(widths) < 2:
        raise ValueError("widths needs at least an input and an output width")
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(fan_in, fan_out, bias=bias))
        if i < len(widths) - 2:
            layers.append(_ACTIVATIONS[activation]())
    model = nn.Sequential(nn.Flatten(), *layers)
    if init == "fan_in":
        _init_fan_in(model, ctx.generator)
    return model


class Quadratic(nn.Module):
    """f(x) = ½ xᵀAx with A = Q diag(eigenvalues) Qᵀ; the forward pass ignores its input."""

    def __init__(self, eigenvalues: torch.Tensor, basis: torch.Tensor, x0: torch.Tensor):
        super().__init__()
        self.register_buffer("A", basis @ torch.diag(eigenvalues) @ basis.T)
        self.x = nn.Parameter(x0.clone())
        self.eigenvalues = eigenvalues

    def forward(self, inputs: torch.Tensor | None = None) -> torch.Tensor:
        return 0.5 * self.x @ (self.A @ self.x)

    def known_sharpness(self) -> float:
        """λ₁(H) = the largest eigenvalue; lets expectations compare with theory."""
        return float(self.eigenvalues.max())


@MODELS.register("quadratic")
@declares(check=_quadratic_check)
def quadratic(ctx: BuildContext, *, eigenvalues: list[float], x0: float | list[float] = 1.0,
              basis: Literal["identity", "random"] = "identity") -> nn.Module:
    """½ xᵀAx from given eigenvalues (f = ½x² is ``eigenvalues: [1.0]``); ``basis: random``
    rotates A by a seeded random orthogonal matrix. Pair with ``loss: {kind: quadratic}``."""
    lam = torch.tensor(eigenvalues, dtype=torch.float64)
    n = lam.numel()
    if basis == "random":
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=ctx.generator, dtype=torch.float64))
    else:
        q = torch.eye(n, dtype=torch.float64)
    start = torch.full((n,), float(x0), dtype=torch.float64) if isinstance(x0, (int, float)) \
        else torch.tensor(x0, dtype=torch.float64)
    if start.shape != (n,):
        raise ValueError(f"x0 has {start.numel()} entries but there are {n} eigenvalues")
    return Quadratic(lam, q, start)


@MODELS.register("decoder_transformer")
def decoder_transformer(ctx: BuildContext, *, vocab: Count, context: Count, width: Count = 64,
                        heads: Count = 4, layers: Count = 2, mlp_ratio: Count = 4) -> nn.Module:
    """A small decoder-only Transformer (pre-LN ``nn.TransformerEncoderLayer`` blocks under a
    causal mask) reading token sequences of length ≤ ``context`` and predicting the next
    token after the last: logits (batch, vocab). GPT-2 initialisation from the run's seed."""
    from stability_bench.components.transformer import DecoderTransformer

    return DecoderTransformer(vocab, context, width, heads, layers, mlp_ratio, ctx.generator)
