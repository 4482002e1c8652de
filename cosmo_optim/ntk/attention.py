"""Self-attention re-expressed with top-level ``F.linear`` calls, for the structured NTK rules.

Private helper of :mod:`cosmo_optim.ntk.rules`. ``F.multi_head_attention_forward`` consumes
``in_proj_weight`` and ``out_proj.weight`` internally, so a ``TorchFunctionMode`` sees them as
unknown uses. For self-attention (``query is key is value``) with one packed input projection,
the same function is

    qkv = linear(x, W_in, b_in);  o = softmax(q kᵀ / √d_h + mask) v;  y = linear(o, W_out, b_out)

which :func:`decompose` computes (batch-first rows, so the Linear rule applies with R = sequence
length). Masks follow ``F.multi_head_attention_forward`` exactly (``_canonical_mask``, the
key-padding merge, the ``is_causal`` hint). Anything else returns ``None``: the caller runs the
original function and the parameters take the exact jacobian path.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["bind", "decompose", "supported"]

_MHA_ARGS = (
    "query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias",
    "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias",
    "training", "key_padding_mask", "need_weights", "attn_mask", "use_separate_proj_weight",
    "q_proj_weight", "k_proj_weight", "v_proj_weight", "static_k", "static_v",
    "average_attn_weights", "is_causal",
)
_DEFAULTS = {
    "training": True, "key_padding_mask": None, "need_weights": True, "attn_mask": None,
    "use_separate_proj_weight": False, "static_k": None, "static_v": None,
    "average_attn_weights": True, "is_causal": False,
}


def bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Arguments of one ``F.multi_head_attention_forward`` call by name, defaults filled in."""
    return _DEFAULTS | dict(zip(_MHA_ARGS, args, strict=False)) | kwargs


def supported(a: dict[str, Any]) -> bool:
    """True if :func:`decompose` reproduces this call exactly."""
    q = a["query"]
    return (
        isinstance(q, torch.Tensor) and q.dim() == 3 and q is a["key"] and q is a["value"]
        and not a["use_separate_proj_weight"] and a["in_proj_weight"] is not None
        and a["bias_k"] is None and a["bias_v"] is None and not a["add_zero_attn"]
        and (a["dropout_p"] == 0.0 or not a["training"])
        and a["static_k"] is None and a["static_v"] is None
        and q.shape[-1] == a["embed_dim_to_check"] and q.shape[-1] % a["num_heads"] == 0
        and not (a["is_causal"] and a["attn_mask"] is None)
    )


def decompose(a: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``F.multi_head_attention_forward`` for a :func:`supported` call, via two ``F.linear``."""
    L, N, E = a["query"].shape
    H = a["num_heads"]
    x = a["query"].transpose(0, 1)  # (N, L, E): sample axis first for the Linear rule
    qkv = F.linear(x, a["in_proj_weight"], a["in_proj_bias"])
    q, k, v = qkv.unflatten(-1, (3, H, E // H)).permute(2, 0, 3, 1, 4)  # each (N, H, L, d_h)
    attn_mask, is_causal, need = a["attn_mask"], a["is_causal"], a["need_weights"]
    kpm = F._canonical_mask(
        mask=a["key_padding_mask"], mask_name="key_padding_mask",
        other_type=F._none_or_dtype(attn_mask), other_name="attn_mask", target_type=x.dtype,
    )
    if is_causal and kpm is None and not need:
        mask = None
    else:
        mask = F._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None,
                                 other_name="", target_type=x.dtype, check_other=False)
        if mask is not None:
            mask = mask.view(N, H, L, L) if mask.dim() == 3 else mask
        if kpm is not None:
            is_causal = False
            kpm = kpm.view(N, 1, 1, L)
            mask = kpm if mask is None else mask + kpm
    weights = None
    if need:
        scores = (q * (E // H) ** -0.5) @ k.transpose(-2, -1)
        if mask is not None:
            scores = scores + mask
        w = scores.softmax(-1)
        o = w @ v
        weights = w.mean(1) if a["average_attn_weights"] else w
    else:
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
    y = F.linear(o.transpose(1, 2).reshape(N, L, E), a["out_proj_weight"], a["out_proj_bias"])
    return y.transpose(0, 1), weights
