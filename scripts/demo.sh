#!/usr/bin/env bash
# End-to-end demo on scikit-learn's bundled digits (offline): every stage script, small budgets.
# Outputs go to runs/demo/ (override with DEMO_DIR=...). Run through `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
WD=${DEMO_DIR:-runs/demo}
M=resnet20
COMMON=(--dataset digits --m_name "$M" --work_dir "$WD" --seed 0)
export BRIDGE_PROGRESS=${BRIDGE_PROGRESS:-0}
start=$(date +%s)
step() { echo; echo "=== $* ==="; }

step "1/3 pretrain $M on digits"
python pretrain.py "${COMMON[@]}" --epochs 30 --patience 10 | grep -E "^\[pretrain\] epoch (1|10|20|30)/|^best|^wrote"

step "2/3 iterative LAMP pruning: 30% of the remaining weights per level, 12 levels (to 98.6%)"
python prune_unstructure.py "${COMMON[@]}" --m_prune iterative --pruner lamp --iter_end 12 --finetune_epochs 4 \
  | grep -E "^\[iterative\] sparsity|^wrote"

step "3/3 one-shot global pruning to 0.9, 0.95, 0.98"
python prune_unstructure.py "${COMMON[@]}" --m_prune oneshot --pruner glob --oneshot 0.9 0.95 0.98 --finetune_epochs 8 \
  | grep -E "^\[oneshot\] sparsity|^wrote"

echo
echo "demo finished in $(( $(date +%s) - start )) s; outputs:"
echo "  dense model        $WD/$M/checkpoint/ckpt.pth  (+ pretrain_log.csv, pretrain_curves.png)"
echo "  iterative pruning  $WD/$M/iterative/  (checkpoints, prune_results.csv, accuracy_vs_sparsity.png)"
echo "  one-shot pruning   $WD/$M/oneshot/"
