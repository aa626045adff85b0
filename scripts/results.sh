#!/usr/bin/env bash
# Reproduces docs/RESULTS.md: the exact commands behind its numbers.
#
#   scripts/results.sh            # everything, in order (~80 min on a 2-core CPU)
#   scripts/results.sh f a3       # some sections: f a3 conv conv_larger prune figures
#
# Run from the repository root. Outputs go to runs/results/ (git-ignored);
# each section refuses to overwrite an output directory that already holds
# checkpoints (delete it, or pass --resume by hand). Every run uses seed 0
# (the presets' default). Set PYTHON to pick the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=runs/results
mkdir -p "$OUT"
DATA=$(scripts/get_fashion_mnist.sh | tail -n 1)   # idx:/usr/share/datasets/fashion-mnist

# Conv runs (sections conv and prune), shortened to fit a 2-core CPU, where
# one Conv7 train step (batch 50) took ~5-10 s: Conv7 without augmentation,
# `max_examples` caps every split (train, validation and test) at the first
# CONV_MAX_EXAMPLES images, CONV_EPOCHS epochs, LaPerm's k = CONV_K steps.
# The paper: all 55k/60k images, augmentation, 45 epochs. See docs/RESULTS.md.
CONV_MODEL=${CONV_MODEL:-conv7}
CONV_EPOCHS=${CONV_EPOCHS:-4}
CONV_MAX_EXAMPLES=${CONV_MAX_EXAMPLES:-500}
CONV_K=${CONV_K:-10}
PRUNE_RATES=${PRUNE_RATES:-"0.5 0.7 0.9"}  # Keep 50, 30, 10% (the dense run is 100%).

run() {  # run NAME ARGS...: one timed command, its log in $OUT/NAME.log
  local name=$1; shift
  echo "== $name: $PYTHON -m experiments $*" | tee "$OUT/$name.log"
  local start=$SECONDS
  "$PYTHON" -m experiments "$@" --no-progress 2>&1 | tee -a "$OUT/$name.log"
  echo "== $name: $((SECONDS - start)) s wall" | tee -a "$OUT/$name.log"
}

section_f() {  # 1. weight-agnostic F1, F2, F2 size-aware (Section 5.5, A.5.0)
  run f1 f1 --dataset "$DATA" --out "$OUT/f1"
  run f2 f2 --dataset "$DATA" --out "$OUT/f2"
  run f2-size-aware f2-size-aware --dataset "$DATA" --out "$OUT/f2-size-aware"
}

section_a3() {  # 2. the A.3 monitor study, four settings (Fig. 13)
  run a3-all a3-all --dataset "$DATA" --out "$OUT/a3-all"
}

# The settings every conv run shares: the conv7 preset (Adam 1e-3 x
# 0.95/epoch, batch 50, seed 0) with augmentation off, a subset and k.
conv_args() {
  echo --dataset "$DATA" --set model.name="$CONV_MODEL" \
    --epochs "$CONV_EPOCHS" --set max_examples="$CONV_MAX_EXAMPLES" \
    --set optimizer.sync_period="$CONV_K" \
    --set augment.rotation=0.0 --set augment.shift=0.0 --set augment.zoom=0.0
}

section_conv() {  # 3. LaPerm vs Adam vs Lookahead on the same conv net
  # shellcheck disable=SC2046
  run conv conv7 $(conv_args) --out "$OUT/conv"
}

section_conv_larger() {  # 3b. the same three on twice the images, k=20
  # Run as two commands (Lookahead was added once time allowed).
  # shellcheck disable=SC2046
  run conv-1000 conv7 $(CONV_MAX_EXAMPLES=1000 CONV_K=20 conv_args) \
    --runs laperm,adam --out "$OUT/conv-1000"
  # shellcheck disable=SC2046
  run conv-1000-lookahead conv7 $(CONV_MAX_EXAMPLES=1000 CONV_K=20 conv_args) \
    --runs lookahead --out "$OUT/conv-1000-lookahead"
}

section_prune() {  # 4. LaPerm on the conv net pruned first (Fig. 15 style)
  local rate
  for rate in $PRUNE_RATES; do
    # shellcheck disable=SC2046
    run "conv-prune-$rate" conv7 $(conv_args) --runs laperm --prune "$rate" \
      --out "$OUT/conv-prune-$rate"
  done
}

section_figures() {  # 5. the figures of docs/results/
  "$PYTHON" docs/results_figures.py --runs "$OUT" --out docs/results
}

sections=("$@")
[[ ${#sections[@]} -eq 0 ]] && sections=(f a3 conv conv_larger prune figures)
for section in "${sections[@]}"; do
  "section_$section"
done
