#!/usr/bin/env bash
# Reward proxies on CIFAR-10 resnet20: how well each ranks allocations against a long finetune, and a search
# of the published size (400 rl episodes, published early stopping) under the best one.
#
#   bash experiments/proxy_fidelity_cifar10.sh      # ~2.3 h on a 2-core AVX2-only CPU (the long rewards: 40 x ~110 s); results/proxy_fidelity_cifar10/
#
#   1. start: one-shot LAMP 0.97 from the shared dense resnet20, 2 epochs of finetune on a fixed 15,000-image
#      subset of the training split (the first study's start level and finetune budget)
#   2. bench/proxy_fidelity.py: 17 untrained-controller samples + uniform / proportional / greedy, budget 2% of
#      the prunable weights (0.97 -> 0.95), init reference; long reward = 2 epochs (236 steps) on the same
#      subset, full validation split, mean of 2 data orders; every proxy on every allocation
#   3. regrowth_oneshot.py --allocator rl --num_epochs 400 under $PROXY, twice: with the published early stopping
#      (patience 50, reward-std rule) and with it off (all 400 episodes); then their best allocations' long rewards
# Every evaluation is a row of $RESULTS/rows.jsonl, reused when the script runs again, and the search resumes
# (--resume), so an interrupted run continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-python}
WORK=${WORK:-runs/proxy_fidelity}
RESULTS=${RESULTS:-results/proxy_fidelity_cifar10}
DATA_DIR=${DATA_DIR:-data}
DENSE=${DENSE:-../shared/data/resnet20_cifar10_dense/ckpt.pth}
PROXY=${PROXY:-"--reward_proxy saliency"}     # the best measured (README Speed)
BN_COUNTS=${BN_COUNTS:-"2 8"}
BN_VAL=${BN_VAL:-"500 2000"}
STEPS=${STEPS:-"10 150"}                      # steps proxies: 10 cosine steps, and one --fast repeat
EPISODES=${EPISODES:-400}
export BRIDGE_PROGRESS=${BRIDGE_PROGRESS:-0}

if [ ! -d "$DATA_DIR/cifar10/train" ]; then
  echo "extracting ../shared/data/cifar10-jpeg.tar.gz into $DATA_DIR/"
  mkdir -p "$DATA_DIR" && tar xzf ../shared/data/cifar10-jpeg.tar.gz -C "$DATA_DIR"
fi
COMMON=(--m_name resnet20 --dataset CIFAR10 --data_dir "$DATA_DIR" --train_limit 15000 --seed 0)
START="$WORK/resnet20/oneshot/resnet20_0.97.pth"
SEARCH=(--initial_ckpt "$START" --regrow_step 0.02 --ssim_threshold 0.35 --init_strategy reference
        --saliency_batches 100 --work_dir "$WORK" --model_sparsity 0.97)
mkdir -p "$WORK/resnet20/checkpoint" "$RESULTS"
[ -f "$WORK/resnet20/checkpoint/ckpt.pth" ] || cp "$DENSE" "$WORK/resnet20/checkpoint/ckpt.pth"

if [ ! -f "$START" ]; then
  $PY prune_unstructure.py "${COMMON[@]}" --pruner lamp --m_prune oneshot --oneshot 0.97 --finetune_epochs 2 \
    --work_dir "$WORK" | tee "$WORK/prune.log"
fi

bench() {
  $PY bench/proxy_fidelity.py "${COMMON[@]}" "${SEARCH[@]}" --allocations 20 --long_epochs 2 --long_seeds 2 \
    --proxy_steps $STEPS --proxy_seeds 1 --bn_batch_counts $BN_COUNTS --bn_val_images $BN_VAL \
    --rows "$RESULTS/rows.jsonl" --out "$RESULTS" "$@"
}
bench | tee "$RESULTS/bench.log"

RUN="$WORK/search"
search() {  # search TAG FLAGS...: one rl search under $PROXY (resumed if interrupted)
  local tag=$1; shift
  local out="$RUN/resnet20/oneshot/0.97_$tag"
  [ -f "$out/summary.json" ] && return
  local resume=(); [ -f "$out/search_state.pth" ] && resume=(--resume)
  local t0=$SECONDS
  $PY regrowth_oneshot.py "${COMMON[@]}" "${SEARCH[@]}" $PROXY --reward_val_subset 2000 --allocator rl \
    --num_epochs "$EPISODES" --finetune_epochs 0 --save_dir "$RUN" --tag "$tag" "${resume[@]}" "$@" 2>&1 \
    | tee "$RESULTS/search_$tag.log"
  echo "search wall time $((SECONDS - t0)) s" | tee -a "$RESULTS/search_$tag.log"
  mkdir -p "$RESULTS/search_$tag"
  cp "$out/episodes.jsonl" "$out/summary.json" "$out/search_curves.png" "$out/allocation.png" "$RESULTS/search_$tag/"
}
search published                                                   # published early stopping
search all400 --early_stop_patience "$EPISODES" --reward_std_threshold 0   # every episode
bench --score_allocations "$RUN"/resnet20/oneshot/0.97_{published,all400}/summary.json | tee "$RESULTS/bench.log"
