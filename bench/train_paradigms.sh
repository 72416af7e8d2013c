#!/usr/bin/env bash
# The paradigm table's models (docs/paradigms.md): FlexVAR on mnist-5k at the bundled VAR's size and steps, then
# equal post-training continuations of it: plain teacher forcing (the control) and SAR's student forcing, two seeds.
# Runs on a CPU (2 cores here); the times it printed are in docs/paradigms.md.
#   bash bench/train_paradigms.sh [WORK_DIR]
set -euo pipefail
WORK=${1:-runs}
ARV=${ARVISION:-arvision}
mkdir -p "$WORK"

# 1. FlexVAR's tokenizer: the bundled tokenizer's budget (conv width 32 x1,2,2, 8x8 latent, 512 codes of dim 16,
#    scales 1,2,3,4,6,8), but LlamaGen's l2-normalised VQ with every scale quantised on its own, trained to
#    reconstruct every scale
time $ARV train-tokenizer --data mnist-5k --quantizer multiscale-independent --image-size 32 --vocab 512 \
    --code-dim 16 --ch 32 --ch-mult 1,2,2 --patch-nums 1,2,3,4,6,8 --steps 2500 --batch-size 32 --lr 3e-4 \
    --out "$WORK/tok-flex" --sample-every 500 --ckpt-every 500

# 2. FlexVAR: the bundled VAR's trunk (depth 6, width 192, 3 heads), steps, batch and learning rate; a random scale
#    list every step (FlexVAR's recipe scaled to an 8x8 latent)
time $ARV train --tokenizer "$WORK/tok-flex" --data mnist-5k --family flexvar --preset small \
    --steps ${FLEX_STEPS:-3000} --batch-size 32 --lr 6e-4 --warmup 100 \
    --out "$WORK/flexvar-mnist" --sample-every 500 --ckpt-every 500

# 3. post-training, as SAR does it (a short continuation of a trained FlexVAR), with the same budget twice: plain
#    teacher forcing (the control) and teacher + student forcing (SAR); at two seeds each
POST=${POST_STEPS:-300}
for seed in ${POST_SEEDS:-1 2}; do
  for mode in tf sar; do
    extra=(); [ "$mode" = sar ] && extra=(--student-forcing)
    time $ARV train --tokenizer "$WORK/tok-flex" --data mnist-5k --family flexvar --preset small \
        --init "$WORK/flexvar-mnist" --steps "$POST" --batch-size 32 --lr 1e-4 --warmup 20 --seed "$seed" "${extra[@]}" \
        --out "$WORK/flexvar-mnist-$mode$POST-seed$seed" --sample-every 1000 --ckpt-every 1000
  done
done

# 4. the sampling defaults of the bundled model (chosen for it before any evaluation), stored with every model
for m in "$WORK"/flexvar-mnist "$WORK"/flexvar-mnist-*"$POST"-seed*; do
python - "$m/config.json" <<'PY'
import json, sys
path = sys.argv[1]
cfg = json.load(open(path))
cfg["sampling"] = {"guidance_scale": 2.0, "top_k": 0, "top_p": 0.96}
json.dump(cfg, open(path, "w"), indent=2)
PY
done
