#!/usr/bin/env bash
# The project's CUDA smoke test: every stage script on scikit-learn's bundled digits (offline) with tiny
# budgets, as scripts/demo.sh calls them, on $DEVICE (default cuda), plus --resume, --compile, both
# explicit precisions, the classic DataLoader backend, torchrun x2 (when 2 GPUs exist), a host-sync count
# over 20 training steps and the throughput bench. Target: under 5 minutes on one GPU.
#
#   bash scripts/gpu_smoke.sh                 # on a CUDA machine
#   DEVICE=cpu bash scripts/gpu_smoke.sh      # dry run of the same commands on a CPU box: CUDA-only steps are
#                                             # skipped with a message, and the data is cut to a few batches
#
# One line per step: "PASS <step> <seconds> s" (or SKIP and why). The first failure stops the script: it
# prints the failing command and the last 40 lines of its log. Logs and outputs: $SMOKE_DIR (runs/gpu_smoke).
# Knobs: PY (python; default .venv/bin/python when there), STEP_TIMEOUT (s per command, 300),
# SMOKE_SMALL (1: tiny data slices; default 1 on the CPU, 0 on CUDA), SMOKE_COMPILE=0 (skip --compile).
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=${DEVICE:-cuda}
if [[ -z "${PY:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
WD=${SMOKE_DIR:-runs/gpu_smoke}
T=${STEP_TIMEOUT:-300}
M=resnet20
CUDA=0; [[ "$DEVICE" == cuda* ]] && CUDA=1
SMALL=${SMOKE_SMALL:-$((1 - CUDA))}
export BRIDGE_PROGRESS=0
export BRIDGE_CACHE_DIR="$WD/cache"   # a fresh saliency / SSIM cache: the passes run here, then are reused once

rm -rf "$WD"
mkdir -p "$WD/logs"
E=(--dataset digits --m_name "$M" --seed 0 --device "$DEVICE")   # evaluation-only scripts
if (( SMALL )); then  # a CPU dry run: a few batches per epoch, so every command path runs in seconds
  E+=(--train_limit 128 --test_limit 64 --batch_size 32 --eval_batch_size 64)
fi
C=("${E[@]}" --work_dir "$WD")                                      # scripts that write under the work dir
S=(--num_epochs 2 --mini_finetune_steps 5 --saliency_batches 2 --ssim_num_batches 2)
FT=10; (( SMALL )) && FT=2   # finetune steps per pruning level (bf16 on a CPU without AVX-512 is very slow)

now() { if [[ -n "${EPOCHREALTIME:-}" ]]; then echo "${EPOCHREALTIME/,/.}"; else date +%s; fi; }
START=$(now)
N=0
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# step NAME COMMAND...: run COMMAND (under STEP_TIMEOUT) with its output in a log; PASS line or stop.
step() {
  local name=$1; shift
  N=$((N + 1))
  local log; log="$WD/logs/$(printf %02d "$N")_${name//[^A-Za-z0-9_.-]/_}.log"
  local t0; t0=$(now)
  timeout "$T" "$@" >"$log" 2>&1
  local rc=$?
  if (( rc == 0 )); then
    printf "PASS %-58s %7s s\n" "$name" "$(elapsed "$t0")"
    return 0
  fi
  printf "FAIL %-58s %7s s (exit %d%s)\n" "$name" "$(elapsed "$t0")" "$rc" "$( (( rc == 124 )) && echo ", timed out after ${T} s")"
  printf "command:"; printf " %q" "$@"; echo
  echo "--- last 40 lines of $log ---"
  tail -n 40 "$log"
  exit 1
}
skip() { printf "SKIP %-58s %s\n" "$1" "$2"; }

echo "gpu smoke test: device $DEVICE, python $PY, outputs $WD$( (( SMALL )) && echo ', small data slices')"
if (( CUDA )) && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "FAIL: DEVICE=$DEVICE but torch sees no CUDA GPU (run DEVICE=cpu for a dry run)"; exit 1
fi

step "environment (torch, GPU, CPU features, --precision auto)" "$PY" - "$DEVICE" <<'EOF'
import sys
import torch
from utils.cpu_features import cpu_features
from utils.runtime import resolve_precision
dev = torch.device(sys.argv[1])
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
print("cpu:", cpu_features().describe())
if dev.type == "cuda":
    p = torch.cuda.get_device_properties(dev)
    print(f"gpu: {p.name} sm_{p.major}{p.minor}, {torch.cuda.device_count()} device(s)")
print("--precision auto ->", resolve_precision("auto", dev).name)
EOF
cat "$WD/logs/01_"*.log | sed 's/^/     /'

# 1. dense training: auto precision, --resume, fp32 with the classic DataLoader
step "pretrain (auto precision, in-memory loader)" "$PY" pretrain.py "${C[@]}" --epochs 2 --patience 5
step "pretrain --resume" "$PY" pretrain.py "${C[@]}" --epochs 3 --patience 5 --resume
step "pretrain --precision fp32 --data_backend loader" "$PY" pretrain.py "${C[@]}" --work_dir "$WD/fp32_loader" \
  --epochs 1 --precision fp32 --data_backend loader --num_workers 2

# 2. unstructured pruning
step "prune_unstructure iterative lamp --precision bf16" "$PY" prune_unstructure.py "${C[@]}" --m_prune iterative \
  --pruner lamp --iter_end 3 --finetune_steps "$FT" --precision bf16
step "prune_unstructure oneshot glob" "$PY" prune_unstructure.py "${C[@]}" --m_prune oneshot --pruner glob \
  --oneshot 0.9 0.95 0.98 --finetune_steps "$FT"

# 3. unstructured regrowth: SSIM hooks, saliency, controller, CUDA masks
step "regrowth_oneshot (rl, scope regrown)" "$PY" regrowth_oneshot.py "${C[@]}" --model_sparsity 0.98 \
  --save_dir "$WD/rl_oneshot" --regrow_step 0.01 --ssim_threshold 0.5 "${S[@]}" --finetune_epochs 0.5 \
  --finetune_scope regrown
step "regrowth_oneshot (random allocator, cached SSIM/saliency)" "$PY" regrowth_oneshot.py "${C[@]}" \
  --model_sparsity 0.98 --save_dir "$WD/rl_oneshot" --regrow_step 0.01 --ssim_threshold 0.5 "${S[@]}" \
  --allocator random --finetune_epochs 0
grep -q "cache: reused" "$WD/logs/$(printf %02d "$N")_"*.log \
  || { echo "FAIL: the second regrowth run did not reuse the SSIM / saliency cache"; exit 1; }
grep -h "cache: reused" "$WD/logs/$(printf %02d "$N")_"*.log | sed 's/^/     /' 
step "regrowth_iterative" "$PY" regrowth_iterative.py "${C[@]}" --save_dir "$WD/rl_iter" --num_iters 1 "${S[@]}" \
  --ssim_threshold 0.5 --target_sparsity 0.3

# 4. structured pruning and regrowth
step "prune_structure iterative taylor --save_compact" "$PY" prune_structure.py "${C[@]}" --m_prune iterative \
  --pruner taylor --iter_end 2 --finetune_steps "$FT" --save_compact
SP=$(ls "$WD/$M/structured_iterative/" 2>/dev/null | grep -E "^${M}_0\.[0-9]+\.pth$" | sort | tail -1)
[[ -n "$SP" ]] || { echo "FAIL: prune_structure wrote no $WD/$M/structured_iterative/${M}_<sparsity>.pth"; exit 1; }
step "regrowth_structure_oneshot" "$PY" regrowth_structure_oneshot.py "${C[@]}" \
  --initial_ckpt "$WD/$M/structured_iterative/$SP" --save_dir "$WD/st_rl" --sparsity_delta 0.05 \
  --ssim_threshold 0.3 "${S[@]}" --finetune_epochs 0.5
step "regrowth_structure_iterative" "$PY" regrowth_structure_iterative.py "${C[@]}" --save_dir "$WD/st_rl" \
  --num_iters 1 "${S[@]}" --ssim_threshold 0.3

# 5. evaluation and analysis
step "test_unstructure_regrowth_model (regrown + baseline)" "$PY" test_unstructure_regrowth_model.py "${E[@]}" \
  --model_path "$WD/rl_oneshot" --baseline_dir "$WD/$M/oneshot" --csv "$WD/evaluation.csv"
step "find_drop_point" "$PY" find_drop_point.py "${E[@]}" --model_path "$WD/$M/iterative" \
  --max_nonzero_params 200000
step "single_layer_regrowth_analysis (2 layers)" "$PY" single_layer_regrowth_analysis.py "${C[@]}" \
  --model_sparsity 0.98 --save_dir "$WD/single" --seeds 0 --mini_finetune_steps 5 --ssim_num_batches 2 \
  --saliency_batches 2 --layers layer1.0.conv1 layer3.2.conv2
step "report" "$PY" report.py --m_name "$M" --work_dir "$WD"

# 6. --compile (inductor: triton kernels on CUDA, C++ on the CPU; the one-time compile dominates)
if [[ "${SMOKE_COMPILE:-1}" == 1 ]]; then
  step "prune_unstructure oneshot --compile" "$PY" prune_unstructure.py "${C[@]}" --work_dir "$WD/compiled" \
    --dense_ckpt "$WD/$M/checkpoint/ckpt.pth" --m_prune oneshot --pruner glob --oneshot 0.97 --finetune_steps 20 \
    --compile
else
  skip "prune_unstructure oneshot --compile" "SMOKE_COMPILE=0"
fi

# 7. host syncs of the training step (CUDA only: torch.cuda.set_sync_debug_mode)
if (( CUDA )); then
  step "host syncs over 20 training steps (<= 3 per step)" "$PY" scripts/count_host_syncs.py --device "$DEVICE" \
    --steps 20
  grep -E "^host syncs|^ +[0-9]+ " "$WD/logs/$(printf %02d "$N")_"*.log | sed 's/^/     /'
else
  skip "host syncs over 20 training steps" "needs CUDA (torch.cuda.set_sync_debug_mode); CPU dry run of the steps:"
  step "count_host_syncs.py --allow_cpu (dry run, counts nothing)" "$PY" scripts/count_host_syncs.py --allow_cpu \
    --steps 2 --batch_size 32
fi

# 8. throughput bench, small settings (its own compile is skipped: step 6 covers --compile)
if (( CUDA )); then
  step "bench/train_throughput.py --device $DEVICE" "$PY" bench/train_throughput.py --models "$M" --device "$DEVICE" \
    --steps 10 --repeats 2 --no_compile
else
  step "bench/train_throughput.py --device cpu (tiny)" "$PY" bench/train_throughput.py --models "$M" --device cpu \
    --batch_size 16 --steps 1 --repeats 1 --no_compile
fi
grep -E "^cpu:|^gpu:|^--precision auto|^$M " "$WD/logs/$(printf %02d "$N")_"*.log | sed 's/^/     /'

# 9. two processes under torchrun (NCCL, DDP training, parallel episodes)
NGPU=0
(( CUDA )) && NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
TORCHRUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node 2)
if (( NGPU >= 2 )); then
  step "torchrun x2 pretrain" "${TORCHRUN[@]}" pretrain.py "${C[@]}" --work_dir "$WD/ddp" --epochs 1
  step "torchrun x2 regrowth_oneshot (parallel episodes)" "${TORCHRUN[@]}" regrowth_oneshot.py "${C[@]}" \
    --model_sparsity 0.98 --save_dir "$WD/ddp_rl" --regrow_step 0.01 --ssim_threshold 0.5 "${S[@]}" \
    --episodes_per_update 2 --finetune_epochs 0.5
else
  skip "torchrun x2 (pretrain, regrowth_oneshot)" "needs 2 CUDA GPUs (found $NGPU)"
fi

TOTAL=$(elapsed "$START")
echo "gpu smoke test passed: $N steps in $TOTAL s on $DEVICE (logs in $WD/logs)"
if (( CUDA )) && awk -v t="$TOTAL" 'BEGIN { exit !(t > 300) }'; then
  echo "note: over the 5-minute target on one GPU"
fi
