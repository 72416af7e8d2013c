#!/usr/bin/env bash
# MaskGIT on mnist-5k: a plain VQ tokenizer (LlamaGen's l2-normalised codebook, the raster model's budget scaled
# down: 32 px -> 8x8 latent = 64 tokens, 512 codes of dim 16) and a MaskGIT transformer on it (AdaLN trunk,
# depth 6, width 192: --preset small). Step counts are arguments, so a short run fits a busy 2-core CPU.
#   bash bench/train_maskgit.sh [WORK_DIR] [TOKENIZER_STEPS] [MASKGIT_STEPS]
# then: python bench/maskgit_eval.py WORK_DIR/maskgit-mnist
set -euo pipefail
WORK=${1:-runs}
TOK_STEPS=${2:-2500}
AR_STEPS=${3:-3000}
ARV=${ARVISION:-arvision}
mkdir -p "$WORK"

if [ ! -f "$WORK/tok-vq/tokenizer.safetensors" ]; then
  time $ARV train-tokenizer --data mnist-5k --quantizer vq --image-size 32 --vocab 512 --code-dim 16 \
      --ch 32 --ch-mult 1,2,2 --steps "$TOK_STEPS" --batch-size 32 --lr 3e-4 \
      --out "$WORK/tok-vq" --sample-every 100000 --ckpt-every 500
fi

time $ARV train --tokenizer "$WORK/tok-vq" --data mnist-5k --family maskgit --preset small \
    --steps "$AR_STEPS" --batch-size 32 --lr 6e-4 --warmup 100 \
    --out "$WORK/maskgit-mnist" --sample-every 100000 --ckpt-every 500
