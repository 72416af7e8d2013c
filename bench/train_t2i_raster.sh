#!/usr/bin/env bash
# A raster (LlamaGen-family) text-to-image model on `shapes`, beside the bundled VAR one (docs/t2i.md, "A raster
# model"): the equal-FLOP paradigm table put raster decoding 8x ahead of VAR in classifier-FID at this compute, and
# the VAR samples' failures are incoherent objects (two colours, merged shapes) that one-token-at-a-time decoding
# does not make.  Runs on a CPU in about an hour and a quarter (2 threads).
#   bash bench/train_t2i_raster.sh [WORK_DIR]
set -euo pipefail
WORK=${1:-runs/t2i-raster}
ARV=${ARVISION:-arvision}
PY=${PYTHON:-python}
BUNDLED=$($PY -c "from arvision.bundled import bundled_model_dir; print(bundled_model_dir('shapes'))")
mkdir -p "$WORK"

# 1. a single-map VQ tokenizer (8x8 codes of 1,024) seeded from the bundled model's multi-scale tokenizer (same conv
#    trunk; the codebook from encoder features), then fine-tuned whole with L1
$PY bench/vq_from_multiscale.py "$BUNDLED" "$WORK/tok-seed" --vocab 1024
$ARV train-tokenizer --data shapes --image-size 64 --init "$WORK/tok-seed" --recon l1 --steps ${TOK_STEPS:-600} \
    --batch-size 32 --lr 2e-4 --warmup 50 --out "$WORK/tok" --overwrite --sample-every 100000 --ckpt-every 100
$PY bench/t2i_verifier.py --tokenizer "$WORK/tok" --per-prompt 1 --json "$WORK/verifier.json"

# 2. the raster text model: the bundled VAR's trunk size and optimiser (small: depth 6, width 192; cross-attention)
$ARV train --tokenizer "$WORK/tok" --data shapes --family llamagen --preset small --steps ${AR_STEPS:-2400} \
    --batch-size 32 --lr 6e-4 --warmup 100 --out "$WORK/raster" --sample-every 100000 --ckpt-every 250

# 3. ship it as the bundled `shapes-raster`: weights stored in bf16 (loaded into fp32 parameters; every figure in
#    docs/t2i.md is of the shipped weights), with the bundled VAR's sampling defaults (chosen before any evaluation)
DEST=src/arvision/assets/shapes_raster
rm -rf "$DEST" && mkdir -p "$DEST"
$PY - "$WORK/raster" "$DEST" <<'PY'
import json, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
src, dest = Path(sys.argv[1]), Path(sys.argv[2])
for name in ("tokenizer.safetensors", "transformer.safetensors"):
    state = load_file(str(src / name))
    save_file({k: v.bfloat16() if v.is_floating_point() else v for k, v in state.items()}, str(dest / name))
cfg = json.loads((src / "config.json").read_text())
cfg["sampling"] = {"guidance_scale": 3.0, "top_k": 0, "top_p": 0.96}
(dest / "config.json").write_text(json.dumps(cfg, indent=2))
PY
du -sh "$DEST"

# 4. the benchmark's table (docs/t2i.md) and search on it (GridAR against best-of-N)
$PY bench/t2i_eval.py --model shapes-raster --per-prompt 4 --seed 0 --json "$WORK/eval.json" \
    --picture docs/img/t2i_tasks_raster.png
$PY bench/t2i_search.py --model shapes-raster --seeds 0 1 2 --per-task 6 --budgets 1 2 4 8 --pool 8 \
    --json "$WORK/search.json"
