#!/usr/bin/env bash
# The CIFAR-10 study: does regrowing from a very sparse model beat pruning straight to the same sparsity,
# and does the SSIM + RL allocation beat simpler allocations, at equal sparsity and equal finetune budget?
#
#   bash experiments/cifar10_cpu.sh            # ~100 min on a 2-core AVX-512 CPU (5-6 h estimated on AVX2-only); results/cifar10_cpu/
#
# Stages (each one is a project script; a finished stage is skipped when the script runs again, so an
# interrupted study continues where it stopped):
#   1. pretrain the dense model                          pretrain.py
#   2. one-shot and iterative pruning curves, LAMP and global     prune_unstructure.py
#   3. the knee of each curve                            find_drop_point.py
#   4. direct pruning to each regrowth target, SEEDS     prune_unstructure.py (PRUNE_EPOCHS + FINAL_EPOCHS)
#   5. regrowth from two starts (just past the knee of the one-shot LAMP curve, and its sparsest level) to the
#      next less sparse level of that curve: allocators rl, random, greedy, proportional, uniform (init
#      reference), then init zero for the arm with the best mean validation accuracy; SEEDS each
#   6. single-layer regrowth analysis at the knee        single_layer_regrowth_analysis.py
#   7. the table and figures                             report.py
#
# Equal budgets: the start checkpoint and the direct arm's prune both begin from the same dense model; a
# regrowth arm finetunes PRUNE_EPOCHS (the curve) + FINAL_EPOCHS (after regrowth), the direct arm
# PRUNE_EPOCHS + FINAL_EPOCHS in one go, all on the same fixed TRAIN_LIMIT-image subset of the training split.
# The search's short proxy finetunes (EPISODES x MINI_STEPS steps) only score allocations; the final finetune
# starts from the regrown, not from the mini-finetuned, weights.
# Every budget below can be overridden from the environment (the tests run this script on digits).
source "$(dirname "$0")/common.sh"  # set -euo pipefail, cd to the repository, PY M DATASET DATA_DIR
WORK=${WORK:-runs/cifar10_study}
RESULTS=${RESULTS:-results/cifar10_cpu}
SEEDS=${SEEDS:-"0 1 2"}
PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-10}       # full 45,000-image training split
TRAIN_LIMIT=${TRAIN_LIMIT:-15000}            # every finetune after pretraining: this fixed subset of it
PRUNE_EPOCHS=${PRUNE_EPOCHS:-2}              # one-shot pruning finetune per level
ONESHOT_LEVELS=${ONESHOT_LEVELS:-"0.5 0.7 0.8 0.9 0.93 0.95 0.97 0.98 0.99"}
ITER_RATE=${ITER_RATE:-0.5}                  # iterative: fraction of the remaining weights pruned per level
ITER_LEVELS=${ITER_LEVELS:-7}                # 0.5 ... 0.9922
ITER_EPOCHS=${ITER_EPOCHS:-1}                # iterative pruning finetune per level
FINAL_EPOCHS=${FINAL_EPOCHS:-2}              # finetune after regrowth
ALLOCATORS=${ALLOCATORS:-"rl random greedy proportional uniform"}
EPISODES=${EPISODES:-8}                      # rl and random: allocations tried
MINI_STEPS=${MINI_STEPS:-40}                 # proxy finetune per episode (--fast: + 2,000 val images)
SALIENCY_BATCHES=${SALIENCY_BATCHES:-50}
SSIM_THRESHOLD=${SSIM_THRESHOLD:-0.35}
SINGLE_LAYER_SEEDS=${SINGLE_LAYER_SEEDS:-"0 1"}
EXTRA=(${EXTRA_ARGS:-})                      # e.g. --batch_size 64 for tiny data

export BRIDGE_PROGRESS=${BRIDGE_PROGRESS:-0}
DATA=(--dataset "$DATASET" --data_dir "$DATA_DIR" --m_name "$M" "${EXTRA[@]}")
FT=(--train_limit "$TRAIN_LIMIT")
DENSE="$WORK/$M/checkpoint/ckpt.pth"
DONE="$WORK/.done"
mkdir -p "$DONE" "$RESULTS"
TIMES="$RESULTS/timings.csv"
[ -f "$TIMES" ] || echo "stage,seconds" > "$TIMES"
study_start=$(date +%s)

if [ "$DATASET" = CIFAR10 ] && [ ! -d "$DATA_DIR/cifar10/train" ] && [ -f ../shared/data/cifar10-jpeg.tar.gz ]; then
  echo "extracting ../shared/data/cifar10-jpeg.tar.gz into $DATA_DIR/"
  mkdir -p "$DATA_DIR" && tar xzf ../shared/data/cifar10-jpeg.tar.gz -C "$DATA_DIR"
fi

# stage NAME CMD...: run CMD unless NAME finished before; log its wall time
stage() {
  local name=$1; shift
  if [ -f "$DONE/$name" ]; then echo "[study] $name: done before, skipped"; return; fi
  echo; echo "[study] $name: $*"
  local t0; t0=$(date +%s)
  "$@" > "$WORK/$name.log" 2>&1 || { echo "[study] $name FAILED, see $WORK/$name.log"; tail -5 "$WORK/$name.log"; exit 1; }
  local dt=$(( $(date +%s) - t0 ))
  sed -i "/^$name,/d" "$TIMES"  # a rerun stage replaces its row
  echo "$name,$dt" >> "$TIMES"
  grep -E "^\[(oneshot|iterative)\] sparsity|^knee|^final|^best|^search done|^SSIM vs gain|^Pearson|^Spearman|^wrote .*report" \
    "$WORK/$name.log" | tail -12 || true
  echo "[study] $name: ${dt} s"
  touch "$DONE/$name"
}

# ---- 1. dense model
stage pretrain $PY pretrain.py "${DATA[@]}" --work_dir "$WORK" --epochs "$PRETRAIN_EPOCHS" --patience "$PRETRAIN_EPOCHS" --seed 0

# ---- 2. pruning curves (one work dir per pruner: both write {m}/oneshot/{m}_{sparsity}.pth)
for P in lamp glob; do
  stage "curve_${P}_oneshot" $PY prune_unstructure.py "${DATA[@]}" "${FT[@]}" --work_dir "$WORK/$P" --dense_ckpt "$DENSE" \
    --pruner "$P" --m_prune oneshot --oneshot $ONESHOT_LEVELS --finetune_epochs "$PRUNE_EPOCHS" --seed 0 --resume
  stage "curve_${P}_iterative" $PY prune_unstructure.py "${DATA[@]}" "${FT[@]}" --work_dir "$WORK/$P" --dense_ckpt "$DENSE" \
    --pruner "$P" --m_prune iterative --sparsity "$ITER_RATE" --iter_end "$ITER_LEVELS" --finetune_epochs "$ITER_EPOCHS" \
    --seed 0 --resume
done

# ---- 3. knees (validation accuracy, 1 point of tolerance below dense)
for P in lamp glob; do
  for C in oneshot iterative; do
    stage "knee_${P}_${C}" $PY find_drop_point.py --model_path "$WORK/$P/$M/$C" "${DATA[@]}" --tolerance 1
  done
done

# the two starts and their targets on the one-shot LAMP curve: "sparsity path target" per line
CURVE="$WORK/lamp/$M/oneshot"
PLAN=(experiments/study_plan.py)  # the decisions below, read from the stages' JSON files
STARTS=$($PY "${PLAN[@]}" starts "$CURVE/boundary.json")
echo "[study] regrowth starts (sparsity, checkpoint, target):"; echo "$STARTS"
TARGETS=$(echo "$STARTS" | awk '{print $3}' | tr '\n' ' ')

# ---- 4. direct arm: prune straight to each target, the same total finetune epochs
for seed in $SEEDS; do
  stage "direct_s$seed" $PY prune_unstructure.py "${DATA[@]}" "${FT[@]}" --work_dir "$WORK/direct_s$seed" \
    --dense_ckpt "$DENSE" --pruner lamp --m_prune oneshot --oneshot $TARGETS \
    --finetune_epochs $((PRUNE_EPOCHS + FINAL_EPOCHS)) --seed "$seed" --resume
done

# ---- 5. regrowth arms
regrow() {  # regrow SPARSITY PATH TARGET ALLOCATOR INIT SEED
  local step; step=$($PY "${PLAN[@]}" step "$1" "$3")
  stage "regrow_$1_$4_$5_s$6" $PY regrowth_oneshot.py "${DATA[@]}" "${FT[@]}" --dense_ckpt "$DENSE" \
    --initial_ckpt "$2" --model_sparsity "$1" --regrow_step "$step" --allocator "$4" --init_strategy "$5" \
    --fill_budget --ssim_threshold "$SSIM_THRESHOLD" --fast --mini_finetune_steps "$MINI_STEPS" --mini_finetune_schedule constant --reward_repeats 1 --saliency_batches "$SALIENCY_BATCHES" \
    --num_epochs "$EPISODES" --finetune_epochs "$FINAL_EPOCHS" --save_dir "$WORK/regrow" --tag "_$4_$5_s$6" --seed "$6"
}
REPORT=(report.py --m_name "$M" --work_dir "$WORK/lamp" --curve_dirs "$WORK/glob" --runs "$WORK/regrow"
        --dense_ckpt "$DENSE" --direct $(for s in $SEEDS; do echo "$WORK/direct_s$s"; done))
# the sparsest start first: it is the published setting (0.99 -> 0.98)
mapfile -t START_LINES < <(echo "$STARTS" | sort -r)
for line in "${START_LINES[@]}"; do
  read -r S SPATH T <<< "$line"
  for seed in $SEEDS; do
    for A in $ALLOCATORS; do regrow "$S" "$SPATH" "$T" "$A" reference "$seed"; done
  done
  # init zero for the allocator with the best mean validation accuracy at this start
  $PY "${REPORT[@]}" --out "$WORK/report_tmp.md" > /dev/null
  BEST=$($PY "${PLAN[@]}" best-allocator "$WORK/report_tmp.json" "$SPATH")
  echo "[study] best allocator from $S (mean val acc): $BEST"
  for seed in $SEEDS; do regrow "$S" "$SPATH" "$T" "$BEST" zero "$seed"; done
done

# ---- 6. single-layer analysis at the knee of the one-shot LAMP curve
read -r S1 S1PATH <<< "$($PY "${PLAN[@]}" single-layer-start "$CURVE/boundary.json")"
stage single_layer $PY single_layer_regrowth_analysis.py "${DATA[@]}" "${FT[@]}" --dense_ckpt "$DENSE" \
  --initial_ckpt "$S1PATH" --model_sparsity "$S1" --seeds $SINGLE_LAYER_SEEDS --mini_finetune_steps "$MINI_STEPS" \
  --reward_val_subset 2000 --saliency_batches "$SALIENCY_BATCHES" --init_strategy reference --save_dir "$WORK/single_layer"

# ---- 7. results: the table, the figures, the knees, the budgets
rm -f "$DONE/report"
stage report $PY "${REPORT[@]}" --out "$RESULTS/report.md" \
  --title "$M on $DATASET: regrowth vs direct pruning at equal sparsity and finetune budget"
for P in lamp glob; do
  for C in oneshot iterative; do
    cp "$WORK/$P/$M/$C/boundary.png" "$RESULTS/knee_${P}_${C}.png"
    cp "$WORK/$P/$M/$C/boundary.json" "$RESULTS/knee_${P}_${C}.json"
  done
done
SL="$WORK/single_layer/$M/$S1"
cp "$SL/ssim_vs_gain.png" "$SL/correlations.json" "$SL/single_layer.csv" "$RESULTS/"
{
  echo "# Budgets of this run"
  echo
  echo "model $M, data $DATASET ($DATA_DIR), seeds: $SEEDS"
  echo "pretrain: $PRETRAIN_EPOCHS epochs on the full training split; later finetunes on a fixed $TRAIN_LIMIT-image subset"
  echo "one-shot curves (lamp, glob): levels $ONESHOT_LEVELS, $PRUNE_EPOCHS finetune epochs each"
  echo "iterative curves (lamp, glob): $ITER_LEVELS levels pruning $ITER_RATE of the remaining weights, $ITER_EPOCHS epoch(s) each"
  echo "regrowth starts (sparsity, checkpoint, target):"; echo "$STARTS" | sed 's/^/  /'
  echo "regrowth: allocators $ALLOCATORS (init reference) + init zero for the best; $EPISODES episodes (rl, random) of"
  echo "  $MINI_STEPS proxy steps scored on 2,000 validation images; saliency over $SALIENCY_BATCHES batches;"
  echo "  SSIM threshold $SSIM_THRESHOLD; final finetune $FINAL_EPOCHS epochs"
  echo "direct arm: one-shot LAMP to each target, $((PRUNE_EPOCHS + FINAL_EPOCHS)) finetune epochs"
  echo "single-layer analysis at $S1: seeds $SINGLE_LAYER_SEEDS, $MINI_STEPS steps per layer"
  echo
  echo "knees (find_drop_point.py, validation accuracy; two-segment fit / published residual rule / 1-point tolerance):"
  for P in lamp glob; do
    for C in oneshot iterative; do
      $PY "${PLAN[@]}" knee-line "$RESULTS/knee_${P}_${C}.json" "$P $C"
    done
  done
  echo
  echo "single-layer SSIM vs gain: $($PY "${PLAN[@]}" correlation-line "$RESULTS/correlations.json")"
  echo
  echo "total wall time of the stages: $(awk -F, 'NR>1{s+=$2} END{print s}' "$TIMES") s (this invocation: $(( $(date +%s) - study_start )) s)"
} > "$RESULTS/budgets.md"
echo
echo "[study] wrote $RESULTS/: report.md, report.png, knee_*.png, ssim_vs_gain.png, timings.csv, budgets.md"
