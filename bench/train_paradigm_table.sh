#!/usr/bin/env bash
# Every paradigm of docs/paradigms.md trained on mnist-5k with the same tokenizer budget and the same training FLOPs,
# in one go (run artefacts do not outlive a session here, so the table is made from start to finish by one run).
#
#   TOK_STEPS=400 VAR_STEPS=360 bash bench/train_paradigm_table.sh [WORK_DIR]
#   then: python bench/paradigm_table.py --work WORK_DIR ... (see docs/paradigms.md for the exact line)
#
# 1. Four tokenizers with one budget: conv width 32 (x1,2,2), 8x8 latent of 32 px digits, 512 codes (BSQ: 9 bits),
#    TOK_STEPS steps x 32 each: VAR's residual multi-scale VQ (VAR, HMAR), LlamaGen's single-map VQ (raster, NAR,
#    MaskGIT, and FlowAR on its pre-quantisation latent), FlexVAR's independently quantised scales, Infinity's BSQ.
# 2. Every trunk is --preset small (depth 6, width 192, 3 heads), batch 32, AdamW lr 6e-4; its step count is the
#    FLOP budget (VAR at VAR_STEPS steps) over its own FLOPs per step, counted by bench/paradigm_flops.py.
# 3. FlexVAR + SAR: the FlexVAR model continued for POST_FRAC of the budget with SAR's student forcing, and the
#    control: continued for the same FLOPs with teacher forcing only (SAR's steps cost twice, so half the steps).
# 4. HMAR's masked stage: the HMAR model continued for MASK_FRAC of the budget training only its masked route (the
#    official mask fine-tune: a copy of the next-scale route's own blocks and head, the rest frozen, at the same lr).
# Two lanes of one thread each (a 2-core CPU); a finished model is skipped, so a rerun resumes the table.
set -euo pipefail
WORK=${1:-runs/paradigms}
TOK_STEPS=${TOK_STEPS:-400}
VAR_STEPS=${VAR_STEPS:-360}
POST_FRAC=${POST_FRAC:-0.1}
MASK_FRAC=${MASK_FRAC:-0.25}
ARV=${ARVISION:-arvision}
PY=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$WORK"

tokenizer() {  # NAME QUANTIZER [extra flags]
  local name=$1 quantizer=$2; shift 2
  [ -f "$WORK/$name/tokenizer.safetensors" ] && return 0
  local t0=$SECONDS
  $ARV train-tokenizer --data mnist-5k --quantizer "$quantizer" --image-size 32 --ch 32 --ch-mult 1,2,2 \
      --vocab 512 --steps "$TOK_STEPS" --batch-size 32 --lr 3e-4 --out "$WORK/$name" --overwrite \
      --sample-every 100000 --ckpt-every 200 "$@" > "$WORK/$name.log" 2>&1
  echo $((SECONDS - t0)) > "$WORK/$name.seconds"
}

steps_of() {  # FAMILY TOKENIZER [SAR]: this family's steps for the budget (bench/paradigm_flops.py)
  local frac=$POST_FRAC
  [ "${3:-}" = --masked-stage ] && frac=$MASK_FRAC
  $PY bench/paradigm_flops.py --tokenizer "$WORK/$2" --family "$1" --var-tokenizer "$WORK/tok-ms" \
      --var-steps "$VAR_STEPS" ${3:+--fraction $frac $3} --json "$WORK/flops-$1${3:+-${3#--}}.json"
}

model() {  # NAME FAMILY TOKENIZER STEPS [extra flags]
  local name=$1 family=$2 tok=$3 steps=$4; shift 4
  [ -f "$WORK/$name/transformer.safetensors" ] && return 0
  local t0=$SECONDS
  $ARV train --tokenizer "$WORK/$tok" --data mnist-5k --family "$family" --preset small --steps "$steps" \
      --batch-size 32 --lr 6e-4 --warmup $((steps / 20 + 1)) --out "$WORK/$name" --overwrite \
      --sample-every 100000 --ckpt-every 200 "$@" > "$WORK/$name.log" 2>&1
  echo $((SECONDS - t0)) > "$WORK/$name.seconds"
}

paradigm() {  # NAME FAMILY TOKENIZER
  model "$1" "$2" "$3" "$(steps_of "$2" "$3")"
}

lane_a() {
  tokenizer tok-ms multiscale --code-dim 16 --patch-nums 1,2,3,4,6,8
  tokenizer tok-vq vq --code-dim 16
  tokenizer tok-bsq bsq --code-dim 9 --patch-nums 1,2,3,4,6,8
  paradigm var var tok-ms
  paradigm llamagen llamagen tok-vq
  paradigm maskgit maskgit tok-vq
  paradigm infinity infinity tok-bsq
}

lane_b() {
  tokenizer tok-flex multiscale-independent --code-dim 16 --patch-nums 1,2,3,4,6,8
  until [ -f "$WORK/tok-ms/tokenizer.safetensors" ]; do sleep 10; done
  paradigm hmar hmar tok-ms
  until [ -f "$WORK/tok-vq/tokenizer.safetensors" ]; do sleep 10; done
  paradigm nar nar tok-vq
  paradigm flexvar flexvar tok-flex
  # SAR and its control continue FlexVAR at 1e-4 (SAR's post-training recipe) for the same extra FLOPs
  model flexvar-sar flexvar tok-flex "$(steps_of flexvar tok-flex --student-forcing)" --init "$WORK/flexvar" \
      --student-forcing --lr 1e-4
  model flexvar-tf flexvar tok-flex "$(steps_of flexvar tok-flex --teacher-forcing)" --init "$WORK/flexvar" \
      --lr 1e-4
  paradigm flowar flowar tok-vq
  model hmar-masked hmar tok-ms "$(steps_of hmar tok-ms --masked-stage)" --init "$WORK/hmar" --masked-stage
}

lane_a & A=$!
lane_b & B=$!
status=0
wait $A || status=$?
wait $B || status=$?
for f in "$WORK"/*.seconds; do echo "$(basename "$f" .seconds): $(cat "$f") s"; done
exit $status
