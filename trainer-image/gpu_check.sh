#!/usr/bin/env bash
# GPU check of the trainer, for a machine with an NVIDIA GPU and a python3 that has torch (CUDA), onnx,
# onnxscript, onnxruntime, numpy and scikit-learn (boto3/wandb are not needed: storage is a local folder,
# tracking is off). Extra wheels, if any, may be dropped into .whl/ at the repo root.
# Prints: GPU, CUDA training with bf16 (accuracy, samples/s), ONNX parity of the GPU-trained model,
# trainer/bare-loop throughput ratio, and ONNX Runtime evaluation. Takes about 2-3 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 MLOPS_LOG_LEVEL=WARNING WANDB_MODE=disabled
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/trainer-image${PYTHONPATH:+:$PYTHONPATH}"
work=$(mktemp -d)
trainer() { "$PY" -m mlops_trainer "$@" --termination-message-path "$work/result.json" >/dev/null; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
trainer write-demo-data --dataset-uri "$work/data"
MLOPS_HYPERPARAMETERS='{"epochs": 10, "batchSize": 64}' trainer train --model digits-cnn --device cuda \
  --dataset-uri "$work/data" --output-uri "$work/model" --checkpoint-uri "$work/checkpoints"
"$PY" - "$work/result.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["status"] == "Succeeded", r
assert r["device"].startswith("cuda") and r["precision"] == "bf16", (r["device"], r["precision"])
m = r["metrics"]
print(f"train: device={r['device']} precision={r['precision']} steps={r['steps']} accuracy={m['accuracy']:.4f} "
      f"samples/s={m['train_samples_per_second']}")
print(f"onnx parity (GPU-trained model vs PyTorch fp32): max abs diff {r['onnxParity']['maxAbsDiff']:.3g} "
      f"<= {r['onnxParity']['tolerance']}")
PY
trainer compile --model-uri "$work/model" --output-uri "$work/engine" --target onnx --max-batch-size 64
trainer evaluate --engine-uri "$work/engine" --dataset-uri "$work/data"
"$PY" - "$work/result.json" <<'PY'
import json, sys
import onnxruntime as ort
r = json.load(open(sys.argv[1]))
print("evaluate:", r["evaluation"]["runtime"], r["metrics"])
# The ModelVersion evaluate Job on a GPU node: with onnxruntime-gpu it must run on CUDA, not fall back.
if "CUDAExecutionProvider" in ort.get_available_providers():
    assert "CUDAExecutionProvider" in r["evaluation"]["runtime"], r["evaluation"]
    print("evaluate ran on CUDA (onnxruntime-gpu)")
else:
    print("onnxruntime has no CUDA provider here (drop an onnxruntime-gpu wheel into .whl/ to check it)")
PY
# target tensorrt: the engine build where TensorRT is installed; elsewhere the trainer must say so
# (exit code and reason), which is what the operator turns into the ModelVersion's condition.
set +e
trainer compile --model-uri "$work/model" --output-uri "$work/engine-trt" --target tensorrt --precision fp16 \
  --max-batch-size 64
code=$?
set -e
"$PY" - "$work/result.json" "$code" <<'PY'
import json, sys
r, code = json.load(open(sys.argv[1])), int(sys.argv[2])
if code == 0:
    e = r["engine"]
    print(f"tensorrt engine: TensorRT {e['tensorrtVersion']} on {e['gpu']} (sm {e['computeCapability']}), "
          f"{e['sizeBytes']} bytes")
else:
    assert r["reason"] == "TensorRTUnavailable", r
    print(f"tensorrt compile: {r['reason']} (exit {code}): {r['message'][:160]}")
PY
"$PY" bench/trainer_throughput.py --device cuda --epochs 10 --repeats 3
rm -rf "$work"
