#!/usr/bin/env bash
# The recipe of the model bundled in src/arvision/assets/model: a class-conditional VAR on mnist-5k.
# Runs on a CPU (2 cores here); the times it printed are in docs/training.md.
#   bash bench/train_bundled_model.sh [WORK_DIR]
set -euo pipefail
WORK=${1:-runs}
ARV=${ARVISION:-arvision}
mkdir -p "$WORK"

# 1. multi-scale residual VQ tokenizer: 32 px digits -> 8x8 latent, 6 scales, 512 codes of dim 16
time $ARV train-tokenizer --data mnist-5k --quantizer multiscale --image-size 32 --vocab 512 --code-dim 16 \
    --ch 32 --ch-mult 1,2,2 --patch-nums 1,2,3,4,6,8 --steps 2500 --batch-size 32 --lr 3e-4 \
    --out "$WORK/tok-mnist" --sample-every 500 --ckpt-every 500

# 2. the VAR transformer on its tokens (depth 6, width 192, 3 heads; 10% label dropout for guidance)
time $ARV train --tokenizer "$WORK/tok-mnist" --data mnist-5k --family var --preset small \
    --steps ${VAR_STEPS:-3000} --batch-size ${VAR_BATCH:-32} --lr 6e-4 --warmup 100 \
    --out "$WORK/var-mnist" --sample-every 500 --ckpt-every 500

# 3. ship it: model folder only (no checkpoints, logs or token caches), with its sampling defaults
DEST=src/arvision/assets/model
rm -rf "$DEST" && mkdir -p "$DEST"
cp "$WORK/var-mnist/config.json" "$WORK/var-mnist/tokenizer.safetensors" "$WORK/var-mnist/transformer.safetensors" "$DEST/"
python - "$DEST/config.json" <<'PY'
import json, sys
path = sys.argv[1]
cfg = json.load(open(path))
cfg["sampling"] = {"guidance_scale": 2.0, "top_k": 0, "top_p": 0.96}  # chosen before any evaluation, not tuned
json.dump(cfg, open(path, "w"), indent=2)
PY
du -sh "$DEST"
