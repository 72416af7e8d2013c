#!/usr/bin/env bash
# The bundled model with its tokenizer's decoder fine-tuned by the VQGAN recipe's adversarial term (docs/evaluation.md,
# "How far sampling can move it"): the encoder and codebook stay frozen, so every token id and the transformer stay
# valid; only how the codes are drawn as pixels changes. Then the evaluation protocol on it, with the tokenizer row.
#
#   bash bench/bundled_decoder_gan.sh [WORK_DIR]      (~23 min of training on one thread, ~13 min of evaluation)
set -euo pipefail
WORK=${1:-runs/bundled-gan}
STEPS=${STEPS:-1500}
ARV=${ARVISION:-arvision}
PY=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
BUNDLED=$($PY -c "from arvision.bundled import bundled_model_dir; print(bundled_model_dir())")
mkdir -p "$WORK"

# 1. the decoder alone, L1 + PatchGAN (weight 0.1), lr 1e-4, from the bundled model's tokenizer
$ARV train-tokenizer --data mnist-5k --init "$BUNDLED" --train-part decoder --disc-weight 0.1 --recon l1 \
    --steps "$STEPS" --batch-size 32 --lr 1e-4 --out "$WORK/tokenizer" --overwrite --sample-every 100000 \
    --ckpt-every 500
# 2. a model folder: the bundled transformer and configuration, the fine-tuned tokenizer weights
mkdir -p "$WORK/model"
cp "$BUNDLED"/config.json "$BUNDLED"/transformer.safetensors "$WORK/model/"
cp "$WORK/tokenizer/tokenizer.safetensors" "$WORK/model/"
# 3. the protocol: the stored settings, no guidance, and the tokenizer's reconstructions of the held digits
$PY bench/eval_bundled.py --model "$WORK/model" --work "$WORK/eval" --reconstructions --setting 0 1 --setting 2 0.96
