"""Prompt tuning: learned virtual tokens prepended to the input, the attention mask extended to cover them.

Every routing level contributes `prompt_tokens` (P) slots, so with L levels the encoder sees L*P + T tokens:
level 0's prompts first, the original T tokens last (`out[:, -T:]` are the original positions). An example
that skips a level (None) gets that level's slots masked out.

Not identity at init: the real tokens attend to the prompts, which changes their outputs; no initialisation of
free input vectors can make attention ignore them. What holds instead, and is tested: the original tokens keep
their position ids (prompts all take the first position id), so an example whose prompt slots are all masked
(routing None at every level), or a call with routing=None, gets exactly the backbone's outputs.

Prompts combine with any other kind (`AdapterConfig(kind="lora", prompt_tokens=8)`): each named adapter then
owns both its layer adapters and its prompt, and one routing choice selects both.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

from common.adapters.base import module_key
from common.adapters.registry import AdapterKind, register_adapter_kind
from common.adapters.routing import BatchPlan, Level


class PromptEmbedding(nn.Module):
    """P learned input vectors, initialised from randomly chosen vocabulary embeddings so their scale fits."""

    def __init__(self, tokens: int, word_embeddings: nn.Embedding, generator: torch.Generator) -> None:
        super().__init__()
        vocab = word_embeddings.weight.shape[0]
        ids = torch.randint(0, vocab, (tokens,), generator=generator)
        self.embedding = nn.Parameter(word_embeddings.weight.detach().cpu()[ids].clone())  # (P, H)


def input_embeddings(backbone: nn.Module) -> nn.Embedding:
    """The backbone's token embedding table (HF models expose it as get_input_embeddings())."""
    getter = getattr(backbone, "get_input_embeddings", None)
    words = getter() if callable(getter) else None
    if not isinstance(words, nn.Embedding):
        raise ValueError(f"prompt tuning needs nn.Embedding input embeddings, got {type(words).__name__}")
    return words


def _embedding(prompts: nn.ModuleDict, name: str) -> Tensor:
    module = prompts[module_key(name)]
    assert isinstance(module, PromptEmbedding)
    return module.embedding


def check_prompt_support(backbone: nn.Module) -> None:
    """Prompts go in as `inputs_embeds` with explicit `position_ids`; the backbone must accept both."""
    params = inspect.signature(backbone.forward).parameters
    missing = [name for name in ("inputs_embeds", "position_ids") if name not in params]
    if missing:
        raise ValueError(
            f"prompt tuning needs a backbone whose forward accepts {', '.join(missing)}; "
            f"{type(backbone).__name__} does not"
        )


def _positions(backbone: nn.Module, input_ids: Tensor) -> tuple[Tensor, int]:
    """Position ids the backbone itself would give the real tokens, and the id every prompt slot gets."""
    embeddings = getattr(backbone, "embeddings", None)
    padding_idx = getattr(embeddings, "padding_idx", None)
    from_ids = getattr(embeddings, "create_position_ids_from_input_ids", None)
    if from_ids is not None and padding_idx is not None:  # RoBERTa-style: positions count real tokens from pad+1
        return from_ids(input_ids, padding_idx), int(padding_idx) + 1
    batch, length = input_ids.shape
    return torch.arange(length, device=input_ids.device).expand(batch, length), 0


def _level_prompts(level: Level, prompts: nn.ModuleDict, batch: int, like: Tensor) -> Tensor:
    """(B, P, H): the level's prompt for every example, zeros for examples that skip the level."""
    if level.name is not None:
        emb = _embedding(prompts, level.name)
        return emb.unsqueeze(0).expand(batch, *emb.shape)
    out = like.new_zeros((batch, *like.shape))
    for name, rows in level.groups:
        emb = _embedding(prompts, name)
        out = out.index_add(0, rows, emb.unsqueeze(0).expand(len(rows), *emb.shape))
    return out


def prompt_mask(attention_mask: Tensor, plan: BatchPlan, tokens: int) -> Tensor:
    """(B, L*P + T) mask: a level's slots are on exactly for the examples that level routes."""
    slots = [level.covered.to(attention_mask.dtype)[:, None].expand(-1, tokens) for level in plan.levels]
    return torch.cat([*slots, attention_mask], dim=1)


def prompt_inputs(
    backbone: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    token_type_ids: Tensor | None,
    plan: BatchPlan,
    prompts: nn.ModuleDict,
    tokens: int,
) -> dict[str, Tensor]:
    """Keyword arguments for the backbone's forward with every level's prompts prepended."""
    batch, length = input_ids.shape
    table = input_embeddings(backbone)
    words = table(input_ids)  # (B, T, H)
    like = table.weight.new_zeros((tokens, table.weight.shape[1]))
    chunks = [_level_prompts(level, prompts, batch, like) for level in plan.levels]
    real_positions, prompt_position = _positions(backbone, input_ids)
    n_prompt = tokens * len(plan.levels)
    position_ids = torch.cat([real_positions.new_full((batch, n_prompt), prompt_position), real_positions], dim=1)
    kwargs = {
        "inputs_embeds": torch.cat([*chunks, words], dim=1),  # (B, L*P + T, H)
        "attention_mask": prompt_mask(attention_mask, plan, tokens),
        "position_ids": position_ids,
    }
    if token_type_ids is not None:
        kwargs["token_type_ids"] = torch.cat([token_type_ids.new_zeros((batch, n_prompt)), token_type_ids], dim=1)
    return kwargs


register_adapter_kind(
    AdapterKind(
        name="prompt",
        summary="learned virtual tokens prepended to the input (no per-module adapters)",
        style=None,
        default_sites=lambda config: (),
        identity_at_init=False,
    )
)
