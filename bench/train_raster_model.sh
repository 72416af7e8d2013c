#!/usr/bin/env bash
# The LlamaGen-style raster model on mnist-5k, with the same tokenizer budget as the bundled VAR
# (same conv widths, 8x8 latent, 512 codes of dim 16, 2,500 steps x 32) and the same transformer trunk
# (depth 6, width 192, 3 heads, 3,000 steps x 32). Used by the efficiency/editing comparisons; lives
# outside the package. Runs on a CPU (2 cores here); the times it printed are in docs/training.md.
#   bash bench/train_raster_model.sh [WORK_DIR]
set -euo pipefail
WORK=${1:-runs}
ARV=${ARVISION:-arvision}
mkdir -p "$WORK"

# 1. plain VQ tokenizer (LlamaGen's l2-normalised codebook): 32 px digits -> 8x8 latent = 64 tokens
time $ARV train-tokenizer --data mnist-5k --quantizer vq --image-size 32 --vocab 512 --code-dim 16 \
    --ch 32 --ch-mult 1,2,2 --steps 2500 --batch-size 32 --lr 3e-4 \
    --out "$WORK/tok-vq" --sample-every 500 --ckpt-every 500

# 2. the LlamaGen-style transformer (Llama blocks, 2-D RoPE, class token as prefix)
time $ARV train --tokenizer "$WORK/tok-vq" --data mnist-5k --family llamagen --preset small \
    --steps ${AR_STEPS:-3000} --batch-size ${AR_BATCH:-32} --lr 6e-4 --warmup 100 \
    --out "$WORK/llamagen-mnist" --sample-every 500 --ckpt-every 500

python - "$WORK/llamagen-mnist/config.json" <<'PY'
import json, sys
path = sys.argv[1]
cfg = json.load(open(path))
cfg["sampling"] = {"guidance_scale": 2.0, "top_k": 0, "top_p": 0.96}  # same defaults as the bundled VAR, not tuned
json.dump(cfg, open(path, "w"), indent=2)
PY
