"""A user's one-step update with the catalog side computed once per silo round (user-level DP, issue 18).

Every user's loss (`user_updates.user_loss`) scores its targets against the whole item table, text_proj(X) +
rows, and the prior, text_prior(X) (no bias), where X is the catalog's frozen text vectors (3,884 x 384 on
MovieLens-1M). Both are linear in their weights, so a user's gradient of text_proj is G^T X and of its bias
sum(G) with G = dL/d(table) (the padding row's zeroed), and likewise for text_prior with g = dL/d(prior): the
same chain rule autograd applies, so the user's update is unchanged (up to float rounding; tests compare). What
changes is that the projections' forward pass, most of a user's cost, is done once per round from the round's
banks instead of once per user. This holds for a user's first step only (later steps would need the table of
the user's own updated weights), and for frozen text vectors only (the text tower's vectors are trained):
`applies` says when, and `user_updates.local_train_users` uses the general path otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from common.names import GLOBAL, make_key
from common.rec.seq_model import PAD, SeqRecModel

Arrays = dict[str, np.ndarray]


class UserSequence(Protocol):
    """What a user's update reads (`user_updates.UserExample`, which imports this module)."""

    @property
    def inputs(self) -> torch.Tensor: ...
    @property
    def types(self) -> torch.Tensor: ...
    @property
    def targets(self) -> torch.Tensor: ...
    @property
    def routes(self) -> list[list[str]]: ...


PROJ_W, PROJ_B = make_key(GLOBAL, "text_proj.weight"), make_key(GLOBAL, "text_proj.bias")
PRIOR_W = make_key(GLOBAL, "text_prior.weight")
LINEAR_KEYS = (PROJ_W, PROJ_B, PRIOR_W)


def applies(model: SeqRecModel, params: Mapping[str, torch.nn.Parameter], steps: int) -> bool:
    """One step per user, frozen text vectors, and the item projections among the trained parameters."""
    return steps == 1 and model.text_tower is None and all(k in params for k in LINEAR_KEYS)


class SharedItemSide:
    """The round's catalog side: the frozen text vectors, the item table and the text prior (no gradient)."""

    def __init__(self, model: SeqRecModel) -> None:
        g = model.global_bank
        with torch.no_grad():
            self.text = model.item_text_vectors()  # (N+1, H), row 0 zero
            self.keep = (torch.arange(self.text.shape[0], device=self.text.device) > PAD).to(self.text.dtype)
            self.table = model.item_table()  # (text_proj(X) + rows) with the padding row zeroed
            self.text_prior = g.text_prior(self.text).squeeze(1)  # (N+1,)

    def user_update(self, model: SeqRecModel, params: Mapping[str, torch.nn.Parameter], ex: UserSequence,
                    lr: float) -> tuple[Arrays, float]:
        """(-lr x the user's gradient for every parameter its loss reaches, its loss): `user_updates.user_update`
        with steps=1, the parameters left untouched."""
        g = model.global_bank
        table = self.table.clone().requires_grad_(True)
        prior = self.text_prior.clone().requires_grad_(True)
        states = model.encode_sequences(ex.inputs.unsqueeze(0).to(model.device), table,
                                        ex.types.unsqueeze(0).to(model.device))[0]
        real = ex.targets != PAD
        users, bias = model.personalise(states[real.to(states.device)], ex.routes)
        loss = F.cross_entropy(model.logits(users, table, bias, prior + g.item_bias), ex.targets[real].to(model.device))
        others = [k for k in params if k not in LINEAR_KEYS]
        grads = torch.autograd.grad(loss, [table, prior, *(params[k] for k in others)], allow_unused=True)
        g_table, g_prior = grads[0], grads[1]
        assert g_table is not None and g_prior is not None  # every target is scored against both
        g_table = g_table * self.keep.unsqueeze(1)
        linear = {PROJ_W: g_table.T @ self.text, PROJ_B: g_table.sum(0),
                  PRIOR_W: (g_prior @ self.text).unsqueeze(0)}
        update = {k: (-lr * v).detach().double().cpu().numpy() for k, v in linear.items()}
        for key, grad in zip(others, grads[2:], strict=True):
            if grad is not None:
                update[key] = (-lr * grad).detach().double().cpu().numpy()
        return update, float(loss.detach())
