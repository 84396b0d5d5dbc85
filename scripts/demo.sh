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

step "1/8 pretrain $M on digits"
python pretrain.py "${COMMON[@]}" --epochs 30 --patience 10 | grep -E "^\[pretrain\] epoch (1|10|20|30)/|^best|^wrote"

step "2/8 iterative LAMP pruning: 30% of the remaining weights per level, 12 levels (to 98.6%)"
python prune_unstructure.py "${COMMON[@]}" --m_prune iterative --pruner lamp --iter_end 12 --finetune_epochs 4 \
  | grep -E "^\[iterative\] sparsity|^wrote"

step "3/8 one-shot global pruning to 0.9, 0.95, 0.98"
python prune_unstructure.py "${COMMON[@]}" --m_prune oneshot --pruner glob --oneshot 0.9 0.95 0.98 --finetune_epochs 8 \
  | grep -E "^\[oneshot\] sparsity|^wrote"

step "4/8 one-shot regrowth 0.98 -> 0.97: SSIM search space, LSTM controller, saliency (12 short episodes)"
python regrowth_oneshot.py "${COMMON[@]}" --model_sparsity 0.98 --save_dir "$WD/rl_saliency_oneshot" \
  --regrow_step 0.01 --ssim_threshold 0.5 --num_epochs 12 --mini_finetune_steps 20 --saliency_batches 10 \
  --init_strategy reference --finetune_epochs 8 | grep -E "^total prunable|^sparse start|^\[oneshot|^search done|^final|^wrote"

step "5/8 iterative regrowth from 0.9862: 2 iterations, budget and split searched (6 episodes each)"
python regrowth_iterative.py "${COMMON[@]}" --save_dir "$WD/rl_checkpoints" --num_iters 2 --num_epochs 6 \
  --mini_finetune_steps 20 --ssim_threshold 0.5 --saliency_batches 10 --target_sparsity 0.97 \
  | grep -E "^pruning curve|^==== iteration|^final|^wrote"

step "6/8 structured pruning: 30% of the channels per level (taylor importance), 4 levels, masks kept"
python prune_structure.py "${COMMON[@]}" --m_prune iterative --pruner taylor --iter_end 4 --finetune_epochs 4 \
  | grep -E "^[0-9]+ channel groups|^\[iterative\] channel|^wrote"

step "7/8 structured one-shot regrowth from the last level: 5% of the filters, dense filter + BN values"
SP=$(ls "$WD/$M/structured_iterative/" | grep -E "^${M}_0\.[0-9]+\.pth$" | sort | tail -1)
python regrowth_structure_oneshot.py "${COMMON[@]}" --initial_ckpt "$WD/$M/structured_iterative/$SP" \
  --save_dir "$WD/structured_rl_ckpts" --sparsity_delta 0.05 --ssim_threshold 0.3 --num_epochs 8 \
  --mini_finetune_steps 20 --saliency_batches 10 --finetune_epochs 6 \
  | grep -E "^total filters|^sparse start|^\[oneshot|^search done|^final|^wrote"

step "8/8 evaluate the pruned and regrown checkpoints (accuracy, sparsity, MACs)"
python test_unstructure_regrowth_model.py --dataset digits --model_path "$WD/rl_saliency_oneshot" \
  --baseline_dir "$WD/$M/oneshot" --csv "$WD/evaluation.csv" | grep -v "^  "
python test_unstructure_regrowth_model.py --dataset digits --model_path "$WD/structured_rl_ckpts" \
  --baseline_dir "$WD/$M/structured_iterative" --csv "$WD/evaluation_structured.csv" | grep -v "^  "

echo; echo "=== boundary: knee of the iterative curve, and a 8,000-weight device budget ==="
python find_drop_point.py --model_path "$WD/$M/iterative" --dataset digits --max_nonzero_params 8000 \
  | grep -E "^knee|^least sparse|^checkpoint just past|^start regrowth|^  python|^wrote"

echo; echo "=== export: the last structured level as ONNX, the sparsest iterative level as a sparse weight file ==="
python export.py --model_path "$WD/$M/structured_iterative/$SP" --format onnx --out "$WD/deploy" | grep -E "^wrote"
IT=$(ls "$WD/$M/iterative/" | grep -E "^${M}_0\.[0-9]+\.pth$" | sort | tail -1)
python export.py --model_path "$WD/$M/iterative/$IT" --format sparse --storage bitmask --out "$WD/deploy" \
  | grep -E "^wrote|^read back"

echo; echo "=== report: every run of $M in one table and figure ==="
python report.py --m_name "$M" --work_dir "$WD" | grep -E "^wrote"

echo
echo "demo finished in $(( $(date +%s) - start )) s; outputs:"
echo "  dense model        $WD/$M/checkpoint/ckpt.pth  (+ pretrain_log.csv, pretrain_curves.png)"
echo "  iterative pruning  $WD/$M/iterative/  (checkpoints, prune_results.csv, accuracy_vs_sparsity.png)"
echo "  one-shot pruning   $WD/$M/oneshot/"
echo "  one-shot regrowth  $WD/rl_saliency_oneshot/$M/oneshot/0.98/  (final_finetuned.pth, search_summary.txt, *.png)"
echo "  iterative regrowth $WD/rl_checkpoints/$M/iterative/  (iter_*/best_grown_model.pth, trajectory.png)"
echo "  structured pruning $WD/$M/structured_iterative/  (masked checkpoints; prune_results.csv has param/MAC ratios)"
echo "  structured regrowth $WD/structured_rl_ckpts/$M/structured_oneshot/"
echo "  evaluation tables  $WD/evaluation.csv, $WD/evaluation_structured.csv  (+ accuracy_vs_sparsity.png)"
echo "  export             $WD/deploy/  (*.onnx, *_bitmask_float32.safetensors)"
echo "  report             $WD/$M/report.md, $WD/$M/report.png"
