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

# 3. the benchmark, as for the bundled model
$ARV eval geneval "$WORK/raster" --per-prompt 1 --seed 0 --json > "$WORK/geneval.json"
