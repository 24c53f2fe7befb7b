"""Build `.devbundle/`, what `simulations/bench/gpu_check.sh` needs carried to a GPU machine that has no network.

    python -m simulations.bench.gpu_bundle [--out .devbundle] [--recbole .work/datasets/ml-1m]

- `minilm16/`: the offline MiniLM's config, tokenizer and weights, the weights in float16 (45 MB instead of
  88 MB: the device tool carries at most 64 MiB). gpu_check.sh turns them back into float32 there; pooled
  embeddings then differ from the original by about 1e-4.
- `ml1m.tar.xz`: MovieLens-1M's RecBole atomic files (`fedadapt data fetch ml-1m` puts them in
  `.work/datasets/ml-1m`; 6 MB compressed). Never commit either: `.devbundle/` belongs in `.git/info/exclude`.
"""

from __future__ import annotations

import argparse
import shutil
import tarfile
from pathlib import Path

from safetensors.torch import load_file, save_file

from common.backbone import default_backbone_path

MODEL_FILES = ("config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt")
RECBOLE_FILES = ("ml-1m.inter", "ml-1m.item", "ml-1m.user")


def write_minilm16(out: Path, source: Path | None = None) -> Path:
    """`out`/minilm16: the model folder with float16 weights (integer tensors such as position ids kept)."""
    source = source or default_backbone_path()
    target = out / "minilm16"
    target.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
    weights = load_file(source / "model.safetensors")
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in weights.items()}
    save_file(half, target / "model.safetensors", metadata={"format": "pt"})
    return target


def write_ml1m(out: Path, recbole: Path) -> Path:
    """`out`/ml1m.tar.xz holding ml-1m/<RecBole files>; a clear error when they are not there."""
    missing = [name for name in RECBOLE_FILES if not (recbole / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{recbole} lacks {', '.join(missing)}; run `fedadapt data fetch ml-1m --out DIR` "
                                "first (it extracts them into .work/datasets/ml-1m) or pass --recbole")
    target = out / "ml1m.tar.xz"
    with tarfile.open(target, "w:xz") as archive:
        for name in RECBOLE_FILES:
            archive.add(recbole / name, arcname=f"ml-1m/{name}")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".devbundle"))
    parser.add_argument("--recbole", type=Path, default=Path(".work/datasets/ml-1m"),
                        help="folder holding ml-1m.inter/.item/.user")
    args = parser.parse_args(argv)
    print(write_minilm16(args.out))
    print(write_ml1m(args.out, args.recbole))
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{args.out}: {size / 2**20:.1f} MiB (the device tool carries at most 64 MiB with the working tree)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
