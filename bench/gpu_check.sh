#!/usr/bin/env bash
# AGPL-3.0 License
# GPU check: every CUDA path of the toolkit in one run of a few minutes (at most 8 on one GPU), one line per check:
#     ok: <check> (<what was measured>)   |   failed: <check>: <reason>   |   skipped: <check>: <reason>
#
#   train-amp          train.py from scratch on the built-in shapes data, AMP on CUDA
#   pagcp-oracle       compress.py PAGCP with its loss oracle on CUDA (prefix cache on)
#   prefix-cache-cap   the oracle's prefix cache: its memory cap (<= 1/4 of free GPU memory), tensors on the device,
#                      and the fallback to plain forwards over the cap, all giving the plain forward's losses
#   finetune-amp       the pruned model fine-tuned with AMP by compress.py, structure kept, checkpoint loadable
#   val-half           val.py --half on the pruned model against FP32
#   speed-cuda         val.py --task speed: CUDA latency (PyTorch FP16, onnxruntime CUDA when installed)
#   tensorrt           the same through onnxruntime's TensorRT provider, when installed
#   export-half        export.py --half: TorchScript, and ONNX when onnxruntime can run FP16 on CUDA to check it
#   engine             export.py --include engine --half (TensorRT FP16, when tensorrt is installed) and val.py on
#                      the .engine file against the pruned .pt; on CPU: the one-line refusal
#   total              wall time against the 8-minute budget (GPU runs)
#
#   bash bench/gpu_check.sh                         # first GPU
#   bash bench/gpu_check.sh --device 1 --out /tmp/gpu_check
#   bash bench/gpu_check.sh --device cpu --fast     # the script's logic on CPU (CI); CUDA-only checks skipped
#
# Options: --device D (default 0), --fast (tiny sizes), --out DIR (default: a new temporary folder),
# --python PY (default: python). Exit status 1 when a check failed. Logs of every step: DIR/logs/<check>.log
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEV=0 FAST=0 OUT="" PY="${PYTHON:-python}"
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEV="$2"; shift 2 ;;
    --fast) FAST=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    -h|--help) sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "ERROR: unknown option '$1' (see bash bench/gpu_check.sh --help)" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-$(mktemp -d /tmp/gpu_check.XXXXXX)}"
LOGS="$OUT/logs" RUNS="$OUT/runs"
mkdir -p "$LOGS" "$RUNS" || { echo "ERROR: cannot create $OUT" >&2; exit 2; }
cd "$ROOT" || exit 2
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" YOLOC_CACHE="${YOLOC_CACHE:-$OUT/cache}"
CPU=0; [ "$(echo "$DEV" | tr 'A-Z' 'a-z')" = cpu ] && CPU=1
if [ "$FAST" = 1 ]; then  # CI: seconds per step on 2 CPU cores
  IMG=64 NTRAIN=16 NVAL=8 BASE_EPOCHS=1 EPOCHS=1 BATCH=8 CALIB=8 STEP=0.45 WORKERS=0 STEP_LIMIT=600
else                      # one GPU: about 3-4 minutes in all
  IMG=320 NTRAIN=256 NVAL=64 BASE_EPOCHS=10 EPOCHS=3 BATCH=32 CALIB=64 STEP=0.1 WORKERS=4 STEP_LIMIT=300
fi
T0=$SECONDS FAILED=0

ok() { echo "ok: $1${2:+ ($2)}"; }
failed() { echo "failed: $1: $2"; FAILED=1; }
skipped() { echo "skipped: $1: $2"; }
reason() {  # the last ERROR/Error line of a log, else its last line (progress bars' carriage returns removed)
  local line
  line=$(tr '\r' '\n' < "$1" | grep -aE "^ERROR|Error|error:" | tail -1)
  [ -z "$line" ] && line=$(tr '\r' '\n' < "$1" | grep -av '^[[:space:]]*$' | tail -1)
  echo "${line:0:300}"
}
step() {  # step NAME CMD...: run CMD with a time limit, output in $LOGS/NAME.log; returns its status
  local name=$1; shift
  timeout "$STEP_LIMIT" "$@" > "$LOGS/$name.log" 2>&1
}
pyval() { "$PY" -c "$1" 2>>"$LOGS/pyval.log"; }  # a value computed by a one-line Python snippet

# ------------------------------------------------------------------ the device
if [ "$CPU" = 1 ]; then
  echo "# gpu_check on cpu (fast=$FAST), files in $OUT"
  skipped cuda "--device cpu: AMP, FP16, CUDA latency, TensorRT and FP16 export are CUDA-only and skipped below"
else
  if ! NAME=$(pyval "import torch; from utils.general import select_device; d = select_device('$DEV'); \
assert d.type == 'cuda', 'no CUDA device'; print(torch.cuda.get_device_name(d), 'torch', torch.__version__, 'CUDA', torch.version.cuda)"); then
    failed cuda "--device $DEV: $(tail -1 "$LOGS/pyval.log")"
    exit 1
  fi
  echo "# gpu_check on cuda:$DEV: $NAME (fast=$FAST), files in $OUT"
fi
PROVIDERS=$(pyval "import onnxruntime as o; print(' '.join(o.get_available_providers()))")

# ------------------------------------------------------------------ data and a base model (AMP training on CUDA)
if ! DATA=$(pyval "from data.shapes import ensure_shapes; print(ensure_shapes(cache_dir='$OUT/data', n_train=$NTRAIN, \
n_val=$NVAL, seed=0))"); then
  failed data "the built-in shapes data could not be generated: $(tail -1 "$LOGS/pyval.log")"
  exit 1
fi
AMP_EXPECTED=$([ "$CPU" = 1 ] && echo off || echo on)
BASE="$RUNS/base/weights/best.pt"
if step train-amp "$PY" train.py --cfg yolov5n.yaml --data "$DATA" --img "$IMG" --batch "$BATCH" --epochs "$BASE_EPOCHS" \
    --device "$DEV" --workers "$WORKERS" --hyp data/hyps/hyp.demo.yaml --optimizer AdamW --project "$RUNS" --name base \
    --exist-ok && [ -f "$BASE" ]; then
  if grep -q "AMP $AMP_EXPECTED" "$LOGS/train-amp.log"; then
    ok train-amp "yolov5n from scratch, $BASE_EPOCHS epoch(s) at $IMG px, AMP $AMP_EXPECTED$([ "$CPU" = 1 ] && echo ': CUDA-only')"
  else
    failed train-amp "the training log does not say 'AMP $AMP_EXPECTED'"
  fi
else
  failed train-amp "$(reason "$LOGS/train-amp.log")"
  echo "# no base model: the checks below need one"; exit 1
fi

# ------------------------------------------------------------------ PAGCP oracle on the device, then AMP fine-tuning
RUN="$RUNS/pagcp"
if step pagcp "$PY" compress.py --weights "$BASE" --data "$DATA" --img "$IMG" --batch "$BATCH" --device "$DEV" \
    --method pagcp --exp --initial_rate 0.01 --initial_thres 1.2 --ratio-step "$STEP" --calib-images "$CALIB" \
    --epochs "$EPOCHS" --no-latency --workers "$WORKERS" --project "$RUNS" --name pagcp --exist-ok \
    && [ -f "$RUN/pruned.pt" ]; then
  ok pagcp-oracle "$(pyval "import json; s = json.load(open('$RUN/summary.json')); \
calls, forwards, secs = open('$RUN/round_0/units.txt').read().splitlines()[1].split(', '); \
print(f'{calls} on $DEV, {forwards.split(\" (\")[0]} in {secs}, prefix cache on, FLOPs x{s[\"flops_ratio\"]:.3f}')")"
  if ! CH=$(pyval "import json; from models.loader import load_model; from prune.surgery import channel_table; \
assert channel_table(load_model('$RUN/round_0/weights/best.pt')) == json.load(open('$RUN/round_0/channels.json')), \
'the fine-tuned checkpoint lost the pruned structure'; s = json.load(open('$RUN/summary.json'))['rounds'][0]; \
print(f'mAP50-95 {s[\"map50_95_before_finetune\"]:.3f} -> {s[\"map50_95\"]:.3f}')"); then
    failed finetune-amp "$(tail -1 "$LOGS/pyval.log")"
  elif ! grep -q "AMP $AMP_EXPECTED" "$LOGS/pagcp.log"; then
    failed finetune-amp "the fine-tuning log does not say 'AMP $AMP_EXPECTED'"
  else
    ok finetune-amp "pruned model, $EPOCHS epoch(s), AMP $AMP_EXPECTED$([ "$CPU" = 1 ] && echo ': CUDA-only'), structure kept, $CH"
  fi
else
  failed pagcp-oracle "$(reason "$LOGS/pagcp.log")"
  skipped finetune-amp "compress.py failed before fine-tuning"
fi
PRUNED="$RUN/pruned.pt"
[ -f "$PRUNED" ] || { echo "# no pruned model: the checks below need one"; exit 1; }

# ------------------------------------------------------------------ the prefix cache's memory cap, on the device
if step prefix-cache-cap "$PY" - "$DEV" "$DATA" "$PRUNED" "$IMG" "$CALIB" <<'PY'
import sys

import numpy as np
import torch

from data.datasets import check_dataset
from models.loss import build_criterion
from prune.methods.pagcp.oracle import CalibrationOracle, calibration_batches
from models.loader import load_model
from prune import build_groups
from prune.masks import ChannelMasks
from utils.general import select_device

dev, data, weights, imgsz, n = select_device(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
model = load_model(weights).to(dev).eval()
batches = calibration_batches(check_dataset(data, splits=("train",)), imgsz, n, min(n, 16), seed=0)
crit = build_criterion(model, None, imgsz)
groups = build_groups(model, imgsz)
masks = ChannelMasks(model, groups)
unit = next(g for g in groups.prunable if (masks.first_layer(g.id) or 0) > 2 and len(g) > 1)
oracles = [CalibrationOracle(model, batches, crit, list(crit.names), dev, prefix_cache=c) for c in (False, True, True)]
plain, cached, capped = oracles
free = torch.cuda.mem_get_info(dev)[0] if dev.type == "cuda" else None
capped.cache_bytes = 1  # over the cap: plain forwards for this unit
with masks:
    masks.set_removed(unit.id, [0])
    for o in (cached, capped):
        o.focus(masks, unit.id)
    ref, first, again, over = plain(), cached(), cached(), capped()
held = [t for x, saved in cached._cache for t in [x, *saved.values()]]
size = sum(t.numel() * t.element_size() for t in held)
assert all(t.device.type == dev.type for t in held), "cached activations are not on the device"
assert capped._cache is None and capped._start is None, "over the cap, the oracle kept its cache"
if free is not None:
    assert cached.cache_bytes <= free // 4 + (64 << 20), f"cap {cached.cache_bytes} B over a quarter of free {free} B"
worst = max(float(np.max(np.abs(a - ref) / np.maximum(np.abs(ref), 1e-12))) for a in (first, again, over))
assert worst < 1e-3, f"cached forwards' losses differ from plain ones by {worst:.2e} (relative)"
print(f"RESULT unit {unit.id} from layer {masks.first_layer(unit.id)}: {size / 2**20:.1f} MiB cached on {dev}, cap "
      f"{cached.cache_bytes / 2**20:.0f} MiB" + (f" (free {free / 2**30:.1f} GiB / 4)" if free else "") +
      f", over-cap fallback ok, losses = plain forwards (max rel diff {worst:.1e})")
PY
then
  ok prefix-cache-cap "$(grep -a '^RESULT' "$LOGS/prefix-cache-cap.log" | cut -c8-)"
else
  failed prefix-cache-cap "$(reason "$LOGS/prefix-cache-cap.log")"
fi

# ------------------------------------------------------------------ val.py --half against FP32
metric() { pyval "import json; print(round(json.load(open('$1/metrics.json'))['map50_95'], 4))"; }
if step val-fp32 "$PY" val.py --weights "$PRUNED" --data "$DATA" --img "$IMG" --batch "$BATCH" --device "$DEV" \
    --workers "$WORKERS" --project "$RUNS" --name val-fp32 --exist-ok; then
  FP32=$(metric "$RUNS/val-fp32")
  if [ "$CPU" = 1 ]; then
    skipped val-half "--half is CUDA-only (val.py in FP32 on cpu: mAP50-95 $FP32)"
  elif step val-half "$PY" val.py --weights "$PRUNED" --data "$DATA" --img "$IMG" --batch "$BATCH" --device "$DEV" \
      --workers "$WORKERS" --project "$RUNS" --name val-half --exist-ok --half; then
    FP16=$(metric "$RUNS/val-half")
    if pyval "assert abs($FP16 - $FP32) <= max(0.01, 0.05 * $FP32)"; then
      ok val-half "mAP50-95 FP16 $FP16 vs FP32 $FP32"
    else
      failed val-half "mAP50-95 FP16 $FP16 vs FP32 $FP32: more than max(0.01, 5%) apart"
    fi
  else
    failed val-half "$(reason "$LOGS/val-half.log")"
  fi
else
  failed val-half "val.py in FP32 failed: $(reason "$LOGS/val-fp32.log")"
fi

# ------------------------------------------------------------------ latency: CUDA, onnxruntime CUDA, TensorRT
HALF=$([ "$CPU" = 1 ] || echo --half)
if step speed "$PY" val.py --task speed --weights "$PRUNED" --img "$IMG" --device "$DEV" --batch-size 8 $HALF \
    --project "$RUNS" --name speed --exist-ok; then
  ROWS=$(pyval "import json; rows = json.load(open('$RUNS/speed/speed.json'))['results']; \
print('; '.join(f'{r[\"backend\"]} {r[\"device\"]}/{r[\"precision\"]} b{r[\"batch\"]} {r[\"ms_per_image\"]:.2f} ms/img' \
for r in rows if r['device'] == ('cpu' if $CPU else 'cuda')))")
  has() { pyval "import json; rows = json.load(open('$RUNS/speed/speed.json'))['results']; \
assert any(r['backend'] == '$1' and r['device'] == 'cuda' for r in rows)"; }
  if [ "$CPU" = 1 ]; then
    ok speed "CPU rows: $ROWS"
    skipped speed-cuda "CUDA-only"
    skipped tensorrt "CUDA-only"
  else
    if has pytorch; then
      NOTE=$(has onnxruntime || echo "; onnxruntime CUDA not timed: no CUDAExecutionProvider (onnxruntime-gpu)")
      ok speed-cuda "$ROWS$NOTE"
    else
      failed speed-cuda "no CUDA rows in speed.json: $(reason "$LOGS/speed.log")"
    fi
    if [[ " $PROVIDERS " != *" TensorrtExecutionProvider "* ]]; then
      skipped tensorrt "onnxruntime has no TensorrtExecutionProvider here (providers: ${PROVIDERS:-none})"
    elif has tensorrt; then
      ok tensorrt "timed through onnxruntime's TensorRT provider (rows above)"
    else
      failed tensorrt "the provider is installed but did not run: $(grep -a TensorRT "$LOGS/speed.log" | tail -1)"
    fi
  fi
else
  failed speed-cuda "$(reason "$LOGS/speed.log")"
fi

# ------------------------------------------------------------------ export --half
if [ "$CPU" = 1 ]; then
  # on CPU the logic left to check is the refusal: one line, exit status 2
  step export-half "$PY" export.py --weights "$PRUNED" --include torchscript --imgsz "$IMG" --device cpu --half
  rc=$?
  if [ $rc = 2 ] && [ "$(grep -c . "$LOGS/export-half.log")" = 1 ] && grep -q "^ERROR: --half" "$LOGS/export-half.log"; then
    skipped export-half "CUDA-only (on cpu export.py refuses --half in one line, exit 2, as it should)"
  else
    failed export-half "export.py --half --device cpu: exit $rc, expected one ERROR line and exit 2"
  fi
else
  INCLUDE="torchscript"; NOTE="; ONNX FP16 not exported: onnxruntime has no CUDA provider to check it"
  if [[ " $PROVIDERS " == *" CUDAExecutionProvider "* ]]; then INCLUDE="torchscript onnx"; NOTE=""; fi
  if step export-half "$PY" export.py --weights "$PRUNED" --include $INCLUDE --imgsz "$IMG" --device "$DEV" --half \
      --project "$RUNS" --name export --exist-ok; then
    ok export-half "$(grep -aE '^  (torchscript|onnx) ' "$LOGS/export-half.log" | \
      sed -E 's/^ +([a-z]+) .*max \|diff\| ([^,]+),.*/\1 FP16 matches PyTorch (max |diff| \2)/' | paste -sd ';' -)$NOTE"
  else
    failed export-half "$(reason "$LOGS/export-half.log")"
  fi
fi

# ------------------------------------------------------------------ TensorRT engine export
if [ "$CPU" = 1 ]; then
  step engine "$PY" export.py --weights "$PRUNED" --include engine --imgsz "$IMG" --device cpu
  rc=$?
  if [ $rc = 2 ] && [ "$(grep -c . "$LOGS/engine.log")" = 1 ] && grep -q "^ERROR: --include engine" "$LOGS/engine.log"; then
    skipped engine "CUDA-only (on cpu export.py refuses --include engine in one line, exit 2, as it should)"
  else
    failed engine "export.py --include engine --device cpu: exit $rc, expected one ERROR line and exit 2"
  fi
elif [ "$(pyval "import importlib.util as u; print(u.find_spec('tensorrt') is not None)")" != True ]; then
  skipped engine "tensorrt is not installed (pip install tensorrt)"
elif step engine "$PY" export.py --weights "$PRUNED" --include engine --half --imgsz "$IMG" --device "$DEV" \
    --project "$RUNS" --name engine --exist-ok \
    && step val-engine "$PY" val.py --weights "$RUNS/engine/$(basename "${PRUNED%.pt}").engine" --data "$DATA" \
      --img "$IMG" --device "$DEV" --project "$RUNS" --name val-engine --exist-ok --no-plots; then
  ok engine "TensorRT FP16 mAP50-95 $(metric "$RUNS/val-engine") vs PyTorch FP32 ${FP32:-?}"
else
  LOG="$LOGS/engine.log"; [ -f "$LOGS/val-engine.log" ] && LOG="$LOGS/val-engine.log"
  failed engine "$(reason "$LOG")"
fi

# ------------------------------------------------------------------ the budget
T=$((SECONDS - T0))
if [ "$CPU" = 1 ]; then
  ok total "$T s on cpu; the 8-minute budget is for one GPU"
elif [ $T -le 480 ]; then
  ok total "$T s (budget 480 s)"
else
  failed total "$T s, over the 480 s budget"
fi
exit $FAILED
