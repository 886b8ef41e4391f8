"""What a DriftMonitor's check Job (`mlops-trainer drift`) and the operator agree on.

The check compares the data a served model was trained on (the reference) with newly landed data
(the current Dataset), column by column, with Evidently's data-drift tests.

Columns (one row per sample):
- image statistics of each sample, named `IMAGE_COLUMNS` (computed the same way for both sides);
- the model's outputs on each sample, named `OUTPUT_COLUMNS`, from running the compiled artifact
  (`ENGINE_URI`: the compile output's prefix, as evaluate reads it; ONNX here) on it;
- tabular features pass through under their own names (`feature_<i>` for an unnamed matrix).

The reference profile is these columns for a sample of the training data (at most
`MAX_SAMPLES` rows), written once as `REFERENCE_FILE` under `REFERENCE_URI` (next to the served
model), so a check never re-reads the training set: when it is missing, the check computes it from
`REFERENCE_DATASET_URI` first. What a check writes under `OUTPUT_URI`: `REPORT_FILE` (Evidently's
HTML report) and `RESULT_FILE` (the full result, every column). Its termination message (result.py)
carries the summary: `drift` below, with at most `MAX_COLUMNS_IN_SUMMARY` columns, drifted first.
"""

from __future__ import annotations

# Environment of the `drift` command (besides envvars.py's S3 names and DATASET_URI, the current data).
REFERENCE_URI = "MLOPS_DRIFT_REFERENCE_URI"  # prefix holding REFERENCE_FILE (written when missing)
REFERENCE_DATASET_URI = "MLOPS_DRIFT_REFERENCE_DATASET_URI"  # the training data, to compute it from
REFERENCE_FINGERPRINT = "MLOPS_DRIFT_REFERENCE_FINGERPRINT"  # the training Dataset's, for lineage
CURRENT_FINGERPRINT = "MLOPS_DRIFT_CURRENT_FINGERPRINT"  # the current Dataset's, for lineage
ENGINE_URI = "MLOPS_ENGINE_URI"  # prefix of the served version's compile output (metadata.json + artifact)
OUTPUT_URI = "MLOPS_DRIFT_OUTPUT_URI"  # prefix for REPORT_FILE and RESULT_FILE of this check
METHOD = "MLOPS_DRIFT_METHOD"  # one of METHODS; unset: Evidently chooses per column
COLUMN_THRESHOLD = "MLOPS_DRIFT_COLUMN_THRESHOLD"  # the method's threshold (unset: Evidently's)
SHARE_THRESHOLD = "MLOPS_DRIFT_SHARE_THRESHOLD"  # drifted share of columns at which the data drifted
COLUMNS = "MLOPS_DRIFT_COLUMNS"  # JSON list of column names to test; unset: all
MAX_SAMPLES_ENV = "MLOPS_DRIFT_MAX_SAMPLES"  # rows sampled from each side (default MAX_SAMPLES)
SPLIT = "MLOPS_DRIFT_SPLIT"  # the current Dataset's split to check (default "test")

# Evidently's stattest names for the methods a spec may ask for.
METHODS = {"psi": "psi", "ks": "ks", "wasserstein": "wasserstein", "jensenshannon": "jensenshannon"}
# Tests of numbers only: a spec's method among these applies to the numerical columns, and Evidently
# chooses the test of the categorical ones (the predicted class).
NUMERICAL_ONLY_METHODS = frozenset({"ks", "wasserstein"})
DEFAULT_SHARE_THRESHOLD = 0.5
MAX_SAMPLES = 5000

IMAGE_COLUMNS = ("brightness", "contrast", "sharpness", "height", "width")
OUTPUT_COLUMNS = ("predicted_class", "confidence", "entropy")

REFERENCE_FILE = "reference.csv.gz"
REPORT_FILE = "report.html"
RESULT_FILE = "result.json"
MAX_COLUMNS_IN_SUMMARY = 12

# Result summary fields (under result.py's summary, key DRIFT).
DRIFT = "drift"
DRIFTED = "drifted"  # bool: the share of drifted columns reached the share threshold
SHARE = "share"  # drifted columns / tested columns
THRESHOLD = "threshold"  # the share threshold used
COLUMNS_FIELD = "columns"  # [{name, method, score, threshold, drifted}], drifted first
COLUMN_COUNT = "columnCount"
DRIFTED_COUNT = "driftedCount"
REFERENCE_ROWS = "referenceRows"
CURRENT_ROWS = "currentRows"
# Column entry fields.
NAME = "name"
COLUMN_METHOD = "method"
SCORE = "score"
COLUMN_DRIFTED = "drifted"
# artifacts (result.py ARTIFACTS) names.
ARTIFACT_REPORT = "report"
ARTIFACT_RESULT = "result"
ARTIFACT_REFERENCE = "reference"
