"""Chapter 36's fast path for the whole model: ``FastGPTModel``, which is
chapter 24's ``GPTModel`` with a KV cache, the output head at chosen positions
only, and the config's switches: ``fused_attention`` (PyTorch's attention
kernel), ``fused_layers`` (its layer-norm and GELU kernels) and
``vocab_pad_multiple`` (embedding and head rows padded to a round number, the
logits trimmed back). Each computes the same function as the teaching model.

The library's loaders and training recipes (``load_or_pretrain``,
``gpt2_from_pretrained``, chapter 34's recipe) build a ``FastGPTModel``, with
every switch off unless asked for: the teaching model's numbers, bit for bit.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import LayerKVCache
from .config import GPTConfig
from .layers import cached_block, fuse_layers
from .model import GPTModel, check_token_ids, select_positions

__all__ = ["FastGPTModel", "KVCache"]


class KVCache:
    """The keys and values of the tokens a ``FastGPTModel`` has seen: one ``LayerKVCache`` per block (chapter 36).

    ``model(ids, kv_cache=cache)`` treats ``ids`` as the tokens that follow the
    ``cache.length`` cached ones (their positions continue from there) and
    appends their keys and values. At most ``max_tokens`` tokens fit.
    """

    def __init__(self, n_layers: int, max_tokens: int):
        self.layers = [LayerKVCache(max_tokens) for _ in range(n_layers)]
        self.max_tokens = max_tokens

    @property
    def length(self) -> int:
        """Number of tokens cached so far."""
        return self.layers[0].length

    def reset(self) -> None:
        """Forget every cached token."""
        for layer in self.layers:
            layer.reset()

    def repeat(self, copies: int) -> KVCache:
        """A new cache with ``copies`` copies of each cached row (see ``LayerKVCache.repeat``)."""
        out = KVCache(0, self.max_tokens)
        out.layers = [layer.repeat(copies) for layer in self.layers]
        return out

    @classmethod
    def for_model(cls, cfg, max_tokens: int | None = None) -> KVCache:
        """An empty cache for a model of configuration ``cfg``, room for ``max_tokens`` (default: its context)."""
        max_tokens = cfg.context_length if max_tokens is None else max_tokens
        if not 1 <= max_tokens <= cfg.context_length:
            raise ValueError(f"max_tokens must lie in [1, context_length={cfg.context_length}], "
                             f"got {max_tokens}")
        return cls(cfg.n_layers, max_tokens)

    def layers_for(self, blocks) -> list[LayerKVCache]:
        """The per-block caches, after checking there is one for each of ``blocks``."""
        if len(self.layers) != len(blocks):
            raise ValueError(f"the KV cache has {len(self.layers)} layers but the model has "
                             f"n_layers={len(blocks)}; make it with model.new_kv_cache()")
        return self.layers



class FastGPTModel(GPTModel):
    """``GPTModel`` with chapter 36's fast path: the same function, the same parameters and,
    for the same seed, the same initial weights.

    - ``model(ids, kv_cache=cache)`` treats ``ids`` as the tokens that follow
      the ``cache.length`` cached ones (``new_kv_cache()`` makes one);
    - ``positions`` runs the output head at chosen positions only (see
      ``select_positions``): ``-1`` gives ``(batch, vocab_size)`` for the next
      token;
    - the switches of ``cfg``: ``fused_attention`` (PyTorch's attention kernel),
      ``fused_layers`` (its layer-norm and GELU kernels) and
      ``vocab_pad_multiple`` (embedding and head rows padded to a round number,
      the logits trimmed back; ``state_dict()`` holds only the real rows, so
      checkpoints are the same with or without padding).
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__(cfg)  # the teaching modules, seeded as in GPTModel
        if cfg.fused_layers:
            fuse_layers(self)
        if cfg.padded_vocab_size != cfg.vocab_size:
            self._pad_vocabulary()

    def check_config(self, cfg: GPTConfig) -> None:
        """Every switch is allowed here."""

    # --- vocabulary padding: checkpoints hold vocab_size rows -------------------------------

    _VOCAB_ROWS = ("tok_emb.weight", "out_head.weight")

    @torch.no_grad()
    def _pad_vocabulary(self) -> None:
        # Zero rows appended to the seeded weights: never looked up, their logits cut off.
        padded = self.cfg.padded_vocab_size
        for module in (self.tok_emb, self.out_head):
            weight = module.weight
            module.weight = nn.Parameter(torch.cat([weight, weight.new_zeros(padded - weight.shape[0],
                                                                             weight.shape[1])]))
        self.tok_emb.num_embeddings = self.out_head.out_features = padded
        if self.cfg.tie_weights:
            self.out_head.weight = self.tok_emb.weight
        post = getattr(self, "register_state_dict_post_hook", None) or self._register_state_dict_hook
        post(FastGPTModel._trim_padding_rows)
        pre = getattr(self, "register_load_state_dict_pre_hook", None)
        if pre is not None:
            pre(FastGPTModel._add_padding_rows)
        else:  # torch < 2.5
            self._register_load_state_dict_pre_hook(FastGPTModel._add_padding_rows, with_module=True)

    @staticmethod
    def _trim_padding_rows(module, state_dict, prefix, local_metadata) -> None:
        for name in FastGPTModel._VOCAB_ROWS:
            if prefix + name in state_dict:
                state_dict[prefix + name] = state_dict[prefix + name][:module.cfg.vocab_size]

    @staticmethod
    def _add_padding_rows(module, state_dict, prefix, *args) -> None:
        v, padded = module.cfg.vocab_size, module.cfg.padded_vocab_size
        for name in FastGPTModel._VOCAB_ROWS:
            t = state_dict.get(prefix + name)
            if t is not None and t.dim() == 2 and t.shape[0] == v:
                state_dict[prefix + name] = torch.cat([t, t.new_zeros(padded - v, t.shape[1])])

    # --- forward -------------------------------------------------------------------------------

    def check_input(self, in_idx: torch.Tensor, start_pos: int = 0) -> None:
        """Raise a clear error if ``in_idx`` is not a ``(batch, tokens)`` tensor of valid ids.

        ``start_pos`` is the number of tokens already in a KV cache before these.
        """
        check_token_ids(in_idx, self.cfg.vocab_size, self.cfg.context_length, start_pos)

    def embed(self, in_idx: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        """Token plus position embeddings ``(batch, tokens, emb_dim)``, before dropout; positions from ``start_pos``."""
        self.check_input(in_idx, start_pos)
        positions = torch.arange(start_pos, start_pos + in_idx.shape[1], device=in_idx.device)
        return self.tok_emb(in_idx) + self.pos_emb(positions)

    def new_kv_cache(self, max_tokens: int | None = None) -> KVCache:
        """An empty ``KVCache`` for this model, with room for ``max_tokens`` (default: the context length)."""
        return KVCache.for_model(self.cfg, max_tokens)

    def backbone(self, in_idx: torch.Tensor,
                 kv_cache: KVCache | None = None) -> torch.Tensor:
        """The last block's output (batch, tokens, emb_dim), before the
        final norm; with kv_cache, in_idx follows the cached tokens."""
        start = 0 if kv_cache is None else kv_cache.length
        x = self.drop_emb(self.embed(in_idx, start))  # positions from start
        if kv_cache is None:
            caches = [None] * len(self.trf_blocks)
        else:
            caches = kv_cache.layers_for(self.trf_blocks)
        for block, cache in zip(self.trf_blocks, caches, strict=True):
            x = cached_block(block, x, cache, self.cfg.fused_attention)
        return x

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and output head: (..., emb_dim) -> (..., vocab_size).
        On chosen positions only, it skips the head's work elsewhere."""
        logits = self.out_head(self.final_norm(hidden))
        if self.cfg.padded_vocab_size != self.cfg.vocab_size:
            logits = logits[..., :self.cfg.vocab_size]  # never predicted
        return logits

    def forward(self, in_idx: torch.Tensor,
                kv_cache: KVCache | None = None,
                positions=None) -> torch.Tensor:
        """Logits (batch, tokens, vocab_size), or only at ``positions``
        (see select_positions: -1 gives (batch, vocab_size))."""
        hidden = self.backbone(in_idx, kv_cache)
        return self.head(select_positions(hidden, positions))
