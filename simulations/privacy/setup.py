"""What every privacy experiment (`fedadapt privacy`) shares: validated options, the data, the users' pools.

Membership inference needs people whose data trained a model and people from the same distribution whose data
did not, and the shadow-model attack needs both again for models the attacker trains himself. So the users
with usable records are shuffled once (seeded) and dealt into four disjoint pools of equal size:
target-in (train the attacked model), target-out (held out), shadow-in and shadow-out (the attacker's). A
user is usable when both architectures can train on him: at least one text training pair and two training
positives in time order.

`validate` only reads (and generates synthetic data in memory when --data is not given), so a bad option is
refused before anything is written; `write_data` writes the generated tables once the experiment starts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.data.schema import Marketplace
from common.names import ARCHS
from common.rec.user_record import RecordLike
from simulations.privacy.registry import names

POOLS = ("target-in", "target-out", "shadow-in", "shadow-out")
MIN_POOL_USERS = 8  # below this an AUC over a pool means nothing
DELTA = 1e-5  # the DP delta every epsilon here is reported at


@dataclass(frozen=True)
class PrivacyOptions:
    """One `fedadapt privacy` invocation; `__post_init__` refuses bad values with a ValueError naming them."""

    out: Path
    experiments: tuple[str, ...] = field(default_factory=names)  # every registered experiment
    data: Path | None = None  # marketplace folder; None: synthetic data generated into OUT/data
    backbone: str = "minilm"  # "tiny", "minilm" or a local model folder
    arch: str = "text"  # the attacked model of membership/segment/curve; items always uses seq (item-side rows)
    epsilons: tuple[float, ...] = (4.0, 16.0, 64.0)  # DP targets of the federated runs (no-DP is always added)
    rounds: int = 2  # federated rounds of every run
    clients: int = 4  # clients of every federated run (segment and items make silos of about 8 users instead)
    seed: int = 0
    users: int = 800  # synthetic users to generate when --data is not given
    products: int = 300
    central_epochs: int = 6  # epochs of the central (over-fitted) reference models of membership inference

    def __post_init__(self) -> None:
        bad = [e for e in self.experiments if e not in names()]
        if bad or not self.experiments:
            raise ValueError(f"unknown experiment(s) {bad}; expected {', '.join(names())} or all")
        if self.arch not in ARCHS:
            raise ValueError(f"--arch {self.arch!r} is not one of {', '.join(ARCHS)}")
        if not self.epsilons:
            raise ValueError("--epsilons needs at least one value")
        for eps in self.epsilons:
            if not (eps > 0 and math.isfinite(eps)):
                raise ValueError(f"--epsilons: every value must be a positive number, got {eps}")
        if len(set(self.epsilons)) != len(self.epsilons):
            raise ValueError(f"--epsilons lists a value twice: {list(self.epsilons)}")
        for name in ("rounds", "users", "products", "central_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.clients < 2:
            raise ValueError(f"--clients must be >= 2 (a secure sum needs several clients), got {self.clients}")
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"--out {self.out} is a file, not a folder")

    @property
    def fed_backbone(self) -> str:
        """The run-config spelling of the backbone ("" is the offline MiniLM)."""
        return "" if self.backbone == "minilm" else self.backbone

    @property
    def load_backbone_arg(self) -> str | None:
        """What `common.backbone.load_backbone` takes (None is the offline MiniLM)."""
        return None if self.backbone == "minilm" else self.backbone

    @property
    def data_dir(self) -> Path:
        return (self.data if self.data is not None else self.out / "data").resolve()


@dataclass
class Setup:
    """The data, every usable user's record, and the four pools of records (disjoint users)."""

    opts: PrivacyOptions
    market: Marketplace
    item_texts: dict[str, str]
    records: list[RecordLike]
    pools: dict[str, list[RecordLike]] = field(default_factory=dict)
    generated: bool = False  # the tables are synthetic and still to be written to OUT/data

    def pool_market(self, pool: str) -> Marketplace:
        """The tables restricted to the users of `pool` (the whole public catalog kept)."""
        from common.data.partition import shard_marketplace

        return shard_marketplace(self.market, [r.user_id for r in self.pools[pool]])


def usable(record: RecordLike) -> bool:
    """Both archs can train on the user: a text pair with a context and two training positives in order."""
    from common.rec.seq_train import train_items_of

    return bool(record.train_pairs) and len(train_items_of(record)) >= 2


def split_pools(records: Sequence[RecordLike], seed: int) -> dict[str, list[RecordLike]]:
    """Deal the usable records (seeded shuffle) into the four POOLS of equal size; the remainder is unused."""
    chosen = [r for r in records if usable(r)]
    order = np.random.default_rng([seed, 0x5EC]).permutation(len(chosen))
    size = len(chosen) // len(POOLS)
    if size < MIN_POOL_USERS:
        raise ValueError(f"only {len(chosen)} users have a text training pair and two training positives; the "
                         f"four pools need at least {MIN_POOL_USERS} each: use more --users or other --data")
    return {pool: [chosen[int(i)] for i in order[k * size:(k + 1) * size]] for k, pool in enumerate(POOLS)}


def validate(opts: PrivacyOptions) -> Setup:
    """Check the backbone, the data (or generate it in memory) and that the pools are large enough; reads only."""
    from common.data.examples import ExampleConfig, build_examples, build_item_texts
    from common.data.schema import read_marketplace
    from simulations.runner.preflight import check_backbone, inspect_data

    check_backbone(opts.fed_backbone)
    if opts.data is not None:
        inspect_data(opts.data)
        market, generated = read_marketplace(opts.data), False
    elif (opts.data_dir / ".complete").is_file():
        market, generated = read_marketplace(opts.data_dir), False
    else:
        from common.data.synthetic import generate_marketplace

        market, generated = generate_marketplace(opts.users, opts.products, seed=opts.seed), True
    records: list[RecordLike] = list(build_examples(market, ExampleConfig(seed=opts.seed)))
    pools = split_pools(records, opts.seed)
    if len(pools["target-in"]) < opts.clients:
        raise ValueError(f"--clients {opts.clients} is more than the {len(pools['target-in'])} users of a pool")
    return Setup(opts, market, build_item_texts(market.products), records, pools, generated)


def write_data(setup: Setup) -> None:
    """Write generated tables to OUT/data (with the marker a later run reuses them by)."""
    if not setup.generated:
        return
    from common.data.schema import write_marketplace

    folder = setup.opts.data_dir
    write_marketplace(setup.market, folder, meta={"source": "synthetic", "users": setup.opts.users,
                                                  "products": setup.opts.products, "seed": setup.opts.seed})
    (folder / ".complete").write_text("ok\n")
    setup.generated = False
