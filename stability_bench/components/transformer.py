"""A small decoder-only Transformer for token sequences, and the modular-arithmetic task
it learns: the setting of Xiong et al. 2025's loss spikes at a size a CPU trains in a minute.

The model is ``torch.nn.TransformerEncoderLayer`` blocks under a causal mask (a decoder-only
stack has no cross-attention, so the encoder layer *is* the decoder block) and predicts the
token after the last position; curvature probes run through it under the math attention
kernel (the fused ones have no double backward).
"""
from __future__ import annotations

import torch
from torch import nn


class DecoderTransformer(nn.Module):
    """Token + learned position embeddings, ``layers`` pre-LayerNorm blocks with a causal
    mask, a final LayerNorm and a linear read-out of the last position: logits (batch, vocab)."""

    def __init__(self, vocab: int, context: int, width: int, heads: int, layers: int,
                 mlp_ratio: int, generator: torch.Generator):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.token = nn.Embedding(vocab, width)
        self.position = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, dim_feedforward=mlp_ratio * width, dropout=0.0,
                                       batch_first=True, norm_first=True)
            for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.readout = nn.Linear(width, vocab)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(context),
                             persistent=False)
        self._init(generator)

    def _init(self, generator: torch.Generator) -> None:
        """GPT-2's scheme, from the run's generator (not torch's global RNG): every matrix
        N(0, 0.02²), biases zero, LayerNorms the identity."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, 0.02, generator=generator)
                elif "norm" in name and name.endswith("weight"):
                    p.fill_(1.0)
                else:
                    p.zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        positions = torch.arange(n, device=tokens.device)
        h = self.token(tokens) + self.position(positions)
        mask = self.causal[:n, :n].to(h.dtype)
        for block in self.blocks:
            h = block(h, src_mask=mask, is_causal=True)
        return self.readout(self.norm(h[:, -1]))


def modular_sums(modulus: int, operands: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sequence ``a b … =`` of ``operands`` residues mod ``modulus`` (token ``modulus``
    is "="), labelled with their sum mod ``modulus``: all modulus**operands examples, in
    lexicographic order."""
    grids = torch.meshgrid(*[torch.arange(modulus)] * operands, indexing="ij")
    x = torch.stack([g.reshape(-1) for g in grids], dim=1)
    equals = torch.full((x.shape[0], 1), modulus, dtype=x.dtype)
    return torch.cat([x, equals], dim=1), x.sum(dim=1) % modulus
