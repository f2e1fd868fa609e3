"""Recurrent mixer states inside transformers' generation caches.

HF's `generate()` creates a `DynamicCache` and passes it to every decoder layer. A
converted decoder layer holds a causal mixer, whose whole past is a small state
(conv context, SSM state) instead of keys and values: `RecurrentMixerSlot` swaps its
layer of the cache for a `RecurrentStateLayer`, which keeps that state and answers
the cache's questions (tokens seen, beam reordering, batch expansion), so greedy
search, sampling and beam search run one token at a time in constant time and
memory per token.
"""

import torch
from transformers.cache_utils import DynamicLayer

from speechbrain_cald.conversion.registry import MixerSlot, valid_frames


class RecurrentStateLayer(DynamicLayer):
    """A cache layer holding a recurrent mixer's state (a tuple of `(batch, ...)`
    tensors) and the number of tokens it has seen; no keys or values."""

    def __init__(self):
        super().__init__()
        self.state = None
        self.tokens = 0

    def advance(self, state, tokens):
        """The state after `tokens` more tokens."""
        self.state, self.tokens = state, self.tokens + tokens
        self.is_initialized = True

    def get_seq_length(self) -> int:
        return self.tokens

    def reorder_cache(self, beam_idx: torch.LongTensor):
        if self.state is not None:
            self.state = tuple(s.index_select(0, beam_idx.to(s.device)) for s in self.state)

    def batch_repeat_interleave(self, repeats: int):
        if self.state is not None:
            self.state = tuple(s.repeat_interleave(repeats, dim=0) for s in self.state)

    def batch_select_indices(self, indices: torch.Tensor):
        if self.state is not None:
            self.state = tuple(s[indices] for s in self.state)

    def crop(self, tokens_to_remove: int):
        if tokens_to_remove:
            raise ValueError("a recurrent state cannot drop tokens (no assisted decoding)")

    def reset(self):
        self.state, self.tokens = None, 0
        self.is_initialized = False


def recurrent_layer(cache, layer_idx) -> RecurrentStateLayer:
    """Layer `layer_idx` of an HF cache as a `RecurrentStateLayer` (an unused layer of
    another kind is replaced; the cache's own methods then reach the state)."""
    while len(cache.layers) <= layer_idx:
        cache.layers.append(RecurrentStateLayer())
    layer = cache.layers[layer_idx]
    if not isinstance(layer, RecurrentStateLayer):
        if layer.get_seq_length():
            raise ValueError(f"cache layer {layer_idx} already holds keys and values")
        layer = cache.layers[layer_idx] = RecurrentStateLayer()
    return layer


class RecurrentMixerSlot(MixerSlot):
    """A `MixerSlot` for a causal mixer with recurrent inference (`step`, and
    `forward(..., state=, return_state=True)`) in a decoder layer that may pass an HF
    cache: the first call on a cache processes the (possibly left-padded) prompt with
    the chunked scan and keeps the final state, later calls continue from it."""

    def __init__(self, mixer, causal, layer_idx):
        super().__init__(mixer, causal)
        self.layer_idx = layer_idx

    def mix_cached(self, hidden_states, attention_mask, cache):
        """hidden_states (batch, time, d_model) continuing what `cache` holds."""
        if not hasattr(self.mixer, "step"):
            raise NotImplementedError(
                f"{type(self.mixer).__name__} has no recurrent inference: "
                "call the model with use_cache=False"
            )
        layer = recurrent_layer(cache, self.layer_idx)
        if layer.state is None:  # the prompt
            valid = valid_frames(attention_mask, hidden_states)
            out, state = self.mixer(hidden_states, attention_mask=valid, return_state=True)
        elif hidden_states.shape[1] == 1:
            out, state = self.mixer.step(hidden_states, layer.state)
        else:
            out, state = self.mixer(hidden_states, state=layer.state, return_state=True)
        layer.advance(state, hidden_states.shape[1])
        return out
