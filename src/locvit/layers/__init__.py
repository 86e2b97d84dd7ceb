"""Building blocks shared by several families; each file holds one idea."""
from locvit.layers.attention import Attention, attend, explicit_attention, record_attention
from locvit.layers.locality_ffn import LocalityFeedForward, tokens_through_map
from locvit.layers.token_mlp import residual_mlp

__all__ = ["Attention", "LocalityFeedForward", "attend", "explicit_attention", "record_attention", "residual_mlp",
           "tokens_through_map"]
