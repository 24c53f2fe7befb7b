"""The frozen backbone of a run, loaded once per process and shared by every arch's models on it."""

from __future__ import annotations

from common.backbone import Backbone, load_backbone
from common.federation.cache import ProcessCache

BACKBONES: ProcessCache[Backbone] = ProcessCache("backbone", maxsize=2)


def backbone_for(path: str) -> Backbone:
    """The frozen backbone for `path` ("tiny", "" = the offline MiniLM, or a folder), loaded once per process."""
    return BACKBONES.get(path or "minilm", lambda: load_backbone(path or None))
