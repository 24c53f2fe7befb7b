"""Explicit per-process caches for what a client must not rebuild per message.

Flower builds the ClientApp's handlers anew for every message, and in simulation one worker process serves
many virtual clients. Loading a backbone (90 MB for MiniLM) or re-partitioning and re-anonymizing the data per
message would dominate a round, and keeping one copy per virtual client would make memory grow with the
number of clients. So each worker process keeps, keyed by what determines them:

- the backbone + adapted model, keyed by (backbone path, adapter config): one per process, shared by all the
  virtual clients it serves (each message loads its own adapter weights before use);
- client data, keyed by (data dir, partitioning, seed, partition id), bounded LRU so 1,000 clients do not
  pile up in one worker.

The caches are plain objects with hit/miss counters so tests can assert "loaded once per process".
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

V = TypeVar("V")


class ProcessCache(Generic[V]):
    """A bounded, thread-safe LRU map from key to a value built on first use."""

    def __init__(self, name: str, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"cache {name!r}: maxsize must be >= 1, got {maxsize}")
        self.name = name
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.RLock()

    def get(self, key: Hashable, build: Callable[[], V]) -> V:
        """The cached value for `key`, building (and caching) it on a miss."""
        with self._lock:
            if key in self._items:
                self.hits += 1
                self._items.move_to_end(key)
                return self._items[key]
            self.misses += 1
            log.info("cache %s: building %r", self.name, key)
            value = build()
            self._items[key] = value
            while len(self._items) > self.maxsize:
                evicted, _ = self._items.popitem(last=False)
                log.debug("cache %s: evicted %r", self.name, evicted)
            return value

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.hits = 0
            self.misses = 0
