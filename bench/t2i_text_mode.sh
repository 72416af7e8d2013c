#!/usr/bin/env bash
# Cross-attention or prefix: which way should the text reach the trunk on the shapes benchmark?  (issue 15 item 3)
# Two text-conditioned VARs that differ only in --text-mode, trained from scratch with the same tokenizer, data,
# captions, seed, steps and optimiser, then judged by the exact verifier on the fixed 553-prompt set.  The two runs
# go side by side, one thread each (two single-thread jobs use a 2-core CPU better than one after the other).
#   [MODES="cross prefix"] bash bench/t2i_text_mode.sh [WORK_DIR] [STEPS]
# WORK_DIR/tok-shapes is the tokenizer of bench/train_t2i_model.sh; when it is absent it is written from the bundled
# `shapes` model's tokenizer (its shipped bf16 weights, loaded into fp32: the tokens every bundled figure used).  The
# token cache is reused when var-shapes/ has one (the same tokens: same tokenizer, same data).  Writes WORK_DIR/cmp-{cross,prefix}/ and
# WORK_DIR/cmp-{cross,prefix}.json (the verifier's summary; the times are in each run's log.jsonl).
set -euo pipefail
WORK=${1:-runs/t2i}
STEPS=${2:-1200}
ARV=${ARVISION:-arvision}
MODES=${MODES:-cross prefix}
if [ ! -f "$WORK/tok-shapes/tokenizer_config.json" ]; then
    mkdir -p "$WORK/tok-shapes"
    python - "$WORK/tok-shapes" <<'PY'
import json, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
from arvision.bundled import bundled_model_dir
src, dst = bundled_model_dir("shapes"), Path(sys.argv[1])
cfg = json.loads((src / "config.json").read_text())
(dst / "tokenizer_config.json").write_text(json.dumps({"tokenizer": cfg["tokenizer"], "image_size": cfg["image_size"]}))
state = load_file(str(src / "tokenizer.safetensors"))
save_file({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, str(dst / "tokenizer.safetensors"))
PY
fi
if [ -z "${EVAL_ONLY:-}" ]; then  # EVAL_ONLY=1: judge runs already trained by these commands
for mode in $MODES; do
    mkdir -p "$WORK/cmp-$mode"
    [ -f "$WORK/var-shapes/tokens.safetensors" ] && cp "$WORK/var-shapes/tokens.safetensors" "$WORK/cmp-$mode/"
    OMP_NUM_THREADS=1 $ARV train --tokenizer "$WORK/tok-shapes" --data shapes --family var --preset small \
        --text-mode $mode --steps "$STEPS" --batch-size 32 --lr 6e-4 --warmup 100 --out "$WORK/cmp-$mode" \
        --sample-every 600 --ckpt-every 300 > "$WORK/cmp-$mode.log" 2>&1 &
done
wait
fi
# the bundled model's sampling settings (cfg 3, top-k off, top-p 0.96), one image per prompt, seeds 0..552
for mode in $MODES; do
    $ARV eval geneval "$WORK/cmp-$mode" --per-prompt 1 --seed 0 --cfg 3.0 --top-k 0 --top-p 0.96 --json \
        > "$WORK/cmp-$mode.json"
done
python - "$WORK" "$MODES" <<'PY'
import json, math, sys
from pathlib import Path
from safetensors import safe_open
work, modes = Path(sys.argv[1]), sys.argv[2].split()
for mode in modes:
    s = json.loads((work / f"cmp-{mode}.json").read_text())
    s = s.get("summary", s)
    log = [json.loads(x) for x in (work / f"cmp-{mode}" / "log.jsonl").read_text().splitlines()]
    cfg = json.loads((work / f"cmp-{mode}" / "config.json").read_text())
    with safe_open(str(work / f"cmp-{mode}" / "transformer.safetensors"), "pt") as f:
        params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    print(mode, "overall", round(s["overall"], 3), {k: round(v["accuracy"], 3) for k, v in s["tasks"].items()},
          "final loss/acc (mean of the last 10 logs)", round(sum(x["loss"] for x in log[-10:]) / 10, 3),
          round(sum(x["acc"] for x in log[-10:]) / 10, 3), "train s", round(log[-1]["time"]),
          "text_mode", cfg["transformer"].get("text_mode"), "params", params)
PY
