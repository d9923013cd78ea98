"""Analytic FLOPs of causal-LM forwards (Kaplan et al.): ``2 N + 2 n_layer n_ctx d_attn`` per token.

``N`` counts the transformer body's matmul parameters (embedding lookups are free); the output head
(``2 V d``) is counted only for positions whose logits are computed (``logits_to_keep``). Used to put
search methods on one compute axis; no profiler is involved, so counts are exact and repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedModel


@dataclass(frozen=True)
class FlopsModel:
    """The sizes the FLOPs formula needs, read once from a model."""

    body_params: int
    head_params: int
    n_layers: int
    d_attn: int

    @classmethod
    def of(cls, model: PreTrainedModel) -> FlopsModel:
        """Read sizes from a (possibly peft-wrapped) causal LM; LoRA parameters count as body."""
        cfg = model.config
        emb = model.get_input_embeddings().weight.numel()
        head = model.get_output_embeddings().weight.numel()
        total = sum(p.numel() for p in model.parameters())
        tied = model.get_input_embeddings().weight is model.get_output_embeddings().weight
        body = total - emb - (0 if tied else head)
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        return cls(
            body_params=body,
            head_params=head,
            n_layers=cfg.num_hidden_layers,
            d_attn=heads * head_dim,
        )

    def forward(
        self, new_tokens: int, context_end: int, *, logits_positions: int | None = None
    ) -> float:
        """FLOPs to compute ``new_tokens`` positions ending at ``context_end`` (attention over the prefix).

        The positions are ``context_end - new_tokens + 1 .. context_end``; attention cost is summed
        over each position's context length. ``logits_positions`` defaults to all new positions.
        """
        if new_tokens <= 0:
            return 0.0
        start = context_end - new_tokens + 1
        ctx_sum = (
            (start + context_end) * new_tokens / 2
        )  # sum of context lengths of the new positions
        heads = new_tokens if logits_positions is None else logits_positions
        return (
            2.0 * self.body_params * new_tokens
            + 2.0 * self.n_layers * self.d_attn * ctx_sum
            + 2.0 * self.head_params * heads
        )
