"""The approximate CPU fast path (`--precision int8`): dynamic int8 quantisation of the image tower.

Every Linear layer of the image tower gets int8 weights, and its activations are quantised per batch
on the fly (torch's dynamic quantisation: fbgemm/x86 kernels using the CPU's int8 dot-product
instructions). open_clip's ViT blocks run attention through nn.MultiheadAttention, whose fused input
projection is a plain parameter that quantisation skips (a third of a block's matmul work), so each
one is first rebuilt as Linear layers around scaled_dot_product_attention (the same arithmetic, in
fp32) and then quantised too. The text tower is untouched: text queries stay exact.

Measured in docs/benchmarks.md. Never the default; a collection records the precision it was built
with and refuses the other one (indexer.models.loading.check_same_precision).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from indexer.errors import ModelLoadError


def quantize_image_tower(clip: Any) -> None:
    """Replace `clip.visual` by its int8 dynamically quantised version, in place (CPU only)."""
    quantize_dynamic = getattr(getattr(torch.ao, "quantization", None), "quantize_dynamic", None)
    if quantize_dynamic is None:  # pragma: no cover - depends on the torch release
        raise ModelLoadError("this PyTorch build has no dynamic quantisation, which --precision int8 needs")
    for module in list(clip.visual.modules()):
        for name, child in list(module.named_children()):
            if _replaceable(child):
                setattr(module, name, LinearSelfAttention.from_mha(child))
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        clip.visual = quantize_dynamic(clip.visual, {nn.Linear}, dtype=torch.qint8)


def _replaceable(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.MultiheadAttention)
        and module.batch_first
        and module._qkv_same_embed_dim
        and module.in_proj_bias is not None
        and module.bias_k is None
        and not module.add_zero_attn
    )


class LinearSelfAttention(nn.Module):
    """nn.MultiheadAttention in eval mode (batch_first, self-attention) with its projections as Linear."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> LinearSelfAttention:
        module = cls(mha.embed_dim, mha.num_heads)
        with torch.no_grad():
            module.qkv.weight.copy_(mha.in_proj_weight)
            module.qkv.bias.copy_(mha.in_proj_bias)
            module.out.weight.copy_(mha.out_proj.weight)
            module.out.bias.copy_(mha.out_proj.bias)
        return module.train(mha.training)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None]:
        if key is not query or value is not query or need_weights or key_padding_mask is not None:
            raise RuntimeError("the int8 fast path rewrites plain self-attention only")
        batch, tokens, dim = query.shape
        qkv = self.qkv(query).view(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        if attn_mask is not None:
            if attn_mask.dim() == 3:  # (batch * heads, L, S), as MultiheadAttention takes it
                attn_mask = attn_mask.view(batch, self.heads, tokens, tokens)
            if attn_mask.dtype != torch.bool:
                attn_mask = attn_mask.to(qkv.dtype)
        attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)
        return self.out(attended.transpose(1, 2).reshape(batch, tokens, dim)), None
