"""Names of the environment variables the operator sets on a workload's container and the workload reads.

Each `mlops-trainer` setting also has a command-line flag (the flag wins); the operator only ever
sets the environment. Meanings and defaults: trainer-image/README.md, "Environment contract".
Secrets (AWS keys, the W&B API key) are only ever set from secretKeyRefs, never as values.
"""

from __future__ import annotations

# Every command.
TERMINATION_MESSAGE_PATH = "MLOPS_TERMINATION_MESSAGE_PATH"
LOG_LEVEL = "MLOPS_LOG_LEVEL"

# `train`.
MODEL = "MLOPS_MODEL"
DATASET_URI = "MLOPS_DATASET_URI"  # also validate-data, write-demo-data, evaluate
DATASET_FINGERPRINT = "MLOPS_DATASET_FINGERPRINT"
OUTPUT_URI = "MLOPS_OUTPUT_URI"  # also compile
HYPERPARAMETERS = "MLOPS_HYPERPARAMETERS"  # a JSON object, TrainingRun.spec.hyperparameters as is
HYPERPARAMETERS_FILE = "MLOPS_HYPERPARAMETERS_FILE"
RUN_NAME = "MLOPS_RUN_NAME"
ATTEMPT = "MLOPS_ATTEMPT"  # informational: which attempt of the run this pod is (1-based)
CHECKPOINT_URI = "MLOPS_CHECKPOINT_URI"
CHECKPOINT_INTERVAL_STEPS = "MLOPS_CHECKPOINT_INTERVAL_STEPS"
KEEP_CHECKPOINTS = "MLOPS_KEEP_CHECKPOINTS"
DEVICE = "MLOPS_DEVICE"
ONNX_TOLERANCE = "MLOPS_ONNX_TOLERANCE"
WORK_DIR = "MLOPS_WORK_DIR"
DIST_TIMEOUT_SECONDS = "MLOPS_DIST_TIMEOUT_SECONDS"
# The pod's index in an Indexed Job: its torchrun node rank (a distributed run).
NODE_RANK = "NODE_RANK"

# `validate-data`.
DATA_CONTRACT = "MLOPS_DATA_CONTRACT"

# `compile`.
MODEL_URI = "MLOPS_MODEL_URI"
COMPILE_TARGET = "MLOPS_COMPILE_TARGET"
PRECISION = "MLOPS_PRECISION"
MAX_BATCH_SIZE = "MLOPS_MAX_BATCH_SIZE"
DYNAMIC_SHAPES = "MLOPS_DYNAMIC_SHAPES"
WORKSPACE_MIB = "MLOPS_WORKSPACE_MIB"
CALIBRATION_DATASET_URI = "MLOPS_CALIBRATION_DATASET_URI"
CALIBRATION_MAX_SAMPLES = "MLOPS_CALIBRATION_MAX_SAMPLES"
CALIBRATION_BATCH_SIZE = "MLOPS_CALIBRATION_BATCH_SIZE"

# `evaluate`.
ENGINE_URI = "MLOPS_ENGINE_URI"
EVAL_SPLIT = "MLOPS_EVAL_SPLIT"
EVAL_BATCH_SIZE = "MLOPS_EVAL_BATCH_SIZE"
EVAL_WARMUP_BATCHES = "MLOPS_EVAL_WARMUP_BATCHES"
EVAL_LATENCY_BATCHES = "MLOPS_EVAL_LATENCY_BATCHES"

# `fetch-model-repository` (a serving pod's init container).
REPOSITORY_URI = "MLOPS_REPOSITORY_URI"  # the content-addressed prefix holding repository.json
REPOSITORY_DIR = "MLOPS_REPOSITORY_DIR"  # the local folder tritonserver loads (--model-repository)

# S3: boto3's own names (the workload's client reads them through boto3 and the fallbacks below).
AWS_ENDPOINT_URL_S3 = "AWS_ENDPOINT_URL_S3"
AWS_ENDPOINT_URL = "AWS_ENDPOINT_URL"
AWS_REGION = "AWS_REGION"
AWS_DEFAULT_REGION = "AWS_DEFAULT_REGION"
AWS_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
AWS_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"  # noqa: S105 - a variable's name, not a secret
AWS_SESSION_TOKEN = "AWS_SESSION_TOKEN"  # noqa: S105

# W&B: wandb's own names; the API key is read by wandb itself, never by the workload's code.
WANDB_PROJECT = "WANDB_PROJECT"
WANDB_ENTITY = "WANDB_ENTITY"
WANDB_MODE = "WANDB_MODE"
WANDB_RUN_ID = "WANDB_RUN_ID"
WANDB_API_KEY = "WANDB_API_KEY"
