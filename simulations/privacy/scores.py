"""What a membership attacker measures on a trained model for one user: how well it fits that user's training data.

A model fits the examples it was trained on better than unseen ones from the same distribution; that gap is
the whole signal of the loss-threshold attack (Yeom et al. 2018) and the input of the shadow-model attack
(Shokri et al. 2017). For each user the attacker scores the user's own training examples with the model:

- text two-tower (`RecModel`): each training pair (context, positive) against the user's 99 sampled test
  negatives (items the user never touched), a softmax cross-entropy per pair, as in training;
- seq (`SeqRecModel`): next-item cross-entropy over the whole catalog at every position of the user's training
  sequence, exactly the training objective.

Features per user (FEATURES): mean loss, lowest loss, mean rank fraction of the positive (0 = ranked first).
The model is only run forward, through its own routing (global + the user's segment banks it serves).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from common.rec.model import RecModel, routing_signature
from common.rec.seq_model import SeqRecModel, left_pad, window
from common.rec.seq_train import target_segments, train_items_of
from common.rec.train import training_pairs
from common.rec.user_record import RecordLike

FEATURES = ("mean_loss", "min_loss", "mean_rank")
BATCH = 64


def _features(losses: Sequence[np.ndarray], ranks: Sequence[np.ndarray]) -> np.ndarray:
    """(U, 3) FEATURES from each user's per-example losses and rank fractions."""
    return np.array([[float(lo.mean()), float(lo.min()), float(ra.mean())] for lo, ra in zip(losses, ranks,
                                                                                           strict=True)])


@torch.no_grad()
def text_features(model: RecModel, records: Sequence[RecordLike], item_texts: Mapping[str, str]) -> np.ndarray:
    """(U, 3) features of the text model on each user's training pairs vs the user's 99 test negatives."""
    model.eval()
    pairs = training_pairs(records)
    if not pairs:
        raise ValueError("no training pairs to score")
    groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for j, pair in enumerate(pairs):
        groups[routing_signature(model.item_routing([pair.segments]), 0)].append(j)
    losses = np.zeros(len(pairs))
    ranks = np.zeros(len(pairs))
    for names, members in groups.items():
        cands = [[pairs[j].item, *records[pairs[j].user].test_negatives] for j in members]
        vectors = model.item_embeddings(sorted({i for row in cands for i in row}), item_texts, names)
        for start in range(0, len(members), BATCH):
            chunk = members[start:start + BATCH]
            segs = [pairs[j].segments for j in chunk]
            users = model.encode_users([pairs[j].context for j in chunk], model.user_routing(segs))  # (B, H)
            items = torch.stack([torch.stack([vectors[i] for i in row]) for row in cands[start:start + BATCH]])
            logits = torch.einsum("bh,bch->bc", users, items) / model.temperature  # (B, 1 + negatives)
            losses[chunk] = (torch.logsumexp(logits, dim=1) - logits[:, 0]).numpy()
            ranks[chunk] = ((logits[:, 1:] >= logits[:, :1]).float().mean(dim=1)).numpy()
    owner = np.array([p.user for p in pairs])
    return _features([losses[owner == u] for u in range(len(records))], [ranks[owner == u] for u in
                                                                          range(len(records))])


@torch.no_grad()
def seq_features(model: SeqRecModel, records: Sequence[RecordLike]) -> np.ndarray:
    """(U, 3) features of the seq model: next-item loss and rank over the catalog at every training position."""
    model.eval()
    table = model.item_table()
    losses: list[np.ndarray] = []
    ranks: list[np.ndarray] = []
    for start in range(0, len(records), BATCH):
        chunk = records[start:start + BATCH]
        seqs = [window(model.indices(train_items_of(r)), model.cfg.max_len + 1) for r in chunk]
        if any(len(s) < 2 for s in seqs):
            raise ValueError("every scored user needs two training positives")
        inputs, targets = left_pad([s[:-1] for s in seqs]), left_pad([s[1:] for s in seqs])
        states = model.encode_sequences(inputs, table)  # (B, T, d)
        real = targets != 0
        routes = [model.routes(seg) for r, s in zip(chunk, seqs, strict=True)
                  for seg in target_segments(r)[-(len(s) - 1):]]
        users, bias = model.personalise(states[real], routes)
        logits = model.logits(users, table, bias)[:, 1:]  # (P, N): the padding column dropped
        target = targets[real] - 1
        picked = logits.gather(1, target.unsqueeze(1))
        loss = (torch.logsumexp(logits, dim=1) - picked[:, 0]).numpy()
        rank = ((logits > picked).float().mean(dim=1)).numpy()
        counts = real.sum(dim=1).tolist()
        offsets = np.cumsum([0, *counts])
        for k in range(len(chunk)):
            losses.append(loss[offsets[k]:offsets[k + 1]])
            ranks.append(rank[offsets[k]:offsets[k + 1]])
    return _features(losses, ranks)


def user_features(model: Any, records: Sequence[RecordLike], item_texts: Mapping[str, str]) -> np.ndarray:
    """(U, 3) membership features of either architecture's model."""
    # Arch branch kept: the attack's features are each model's own training loss and rank, defined per arch.
    if isinstance(model, SeqRecModel):
        return seq_features(model, records)
    return text_features(model, records, item_texts)
