"""The seq model's frozen item-text vectors, read from the node's disk cache when it holds them.

Encoding a catalog with the frozen backbone is the seq client's one expensive step before training, and its
result depends only on the backbone, the catalog texts and `max-len`. A node keeps it on disk
(common/federation/node_cache.py, kind `item-vectors`), so a ClientApp process that finds it there neither
imports transformers nor loads the backbone: it only reads an (N, H) float32 tensor. The trainable parts of
the item side (the banks' text projection, or text-tower adapters) are never cached.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from common.federation.node_cache import NodeCache, _digest, backbone_fingerprint, node_cache
from common.protocol import FedConfig
from common.rec.seq_model import catalog_fingerprint, frozen_item_vectors

if TYPE_CHECKING:
    from common.backbone import Backbone

log = logging.getLogger(__name__)

KIND = "item-vectors"
NAME = "vectors"


def vectors_key(cfg: FedConfig, catalog: Sequence[str], item_texts: Mapping[str, str], cache: NodeCache) -> str:
    """The cache file's key: backbone content hash, catalog ids and texts, and the token limit."""
    return _digest(KIND, backbone_fingerprint(cfg.backbone, cache.root), catalog_fingerprint(catalog, item_texts),
                   str(cfg.max_len))


def valid_vectors(tensors: Mapping[str, torch.Tensor], rows: int) -> torch.Tensor | None:
    """The vectors of a loaded file when they are what the key promises: one finite float32 (rows, H) tensor."""
    value = tensors.get(NAME)
    if set(tensors) != {NAME} or value is None or value.dtype != torch.float32 or value.ndim != 2:
        return None
    if value.shape[0] != rows or value.shape[1] < 1 or not bool(torch.isfinite(value).all()):
        return None
    return value


def item_vectors(cfg: FedConfig, catalog: Sequence[str], item_texts: Mapping[str, str],
                 backbone: Backbone | None = None) -> torch.Tensor:
    """(len(catalog), H) frozen text vectors: from the node cache, else encoded (loading the backbone only now,
    unless the caller has it) and written to the cache for the next process."""
    cache = node_cache(cfg.client_state_dir, cfg.data_dir, cfg.node_cache_mb)
    key = ""
    if cache.enabled:
        key = vectors_key(cfg, catalog, item_texts, cache)
        tensors = cache.load(KIND, key)
        if tensors is not None:
            found = valid_vectors(tensors, len(catalog))
            if found is not None:
                log.info("item text vectors of %d items read from the node cache", len(catalog))
                return found
            cache.discard(KIND, key, "not the vectors its key promises")
    if backbone is None:
        from common.federation.backbones import backbone_for

        backbone = backbone_for(cfg.backbone)
    vectors = frozen_item_vectors(backbone, catalog, item_texts, max_len=cfg.max_len)
    if cache.enabled:
        cache.save(KIND, key, {NAME: vectors.float().contiguous()})
    return vectors
