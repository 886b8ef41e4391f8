"""`mlops-trainer train|compile|evaluate|validate-data|write-demo-data|drift|fetch-model-repository`.

Each flag has an environment variable (named in its help); the flag wins. Every command ends by
writing the JSON result summary to the termination-message path and exiting with a code from
`errors.ExitCode`, so the operator learns the outcome from the pod's status alone.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from mlops_contract import drift as drift_contract
from mlops_contract import envvars

from . import __version__
from .errors import ExitCode, TrainerError
from .result import summary, termination_message_path, write_termination_message

log = logging.getLogger("mlops_trainer")
Handler = Callable[[argparse.Namespace], dict[str, Any]]


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value else None


def _flag(parser: argparse.ArgumentParser, flag: str, env: str, help_text: str, **kwargs: Any) -> None:
    """A flag whose default comes from `env` (read when the command line is parsed)."""
    parser.add_argument(flag, default=_env(env), help=f"{help_text} [env {env}]", **kwargs)


def _int(value: str | None, default: int, name: str) -> int:
    from .errors import ConfigError  # noqa: PLC0415

    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None


def _float(value: str | None, default: float, name: str) -> float:
    from .errors import ConfigError  # noqa: PLC0415

    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {value!r}") from None


def _train(args: argparse.Namespace) -> dict[str, Any]:
    from .config import Hyperparameters, TrackingSettings, TrainSettings  # noqa: PLC0415
    from .train import train  # noqa: PLC0415 - torch loads only for commands that need it

    hyperparameters_text = args.hyperparameters
    if args.hyperparameters_file:
        with open(args.hyperparameters_file, encoding="utf-8") as handle:
            hyperparameters_text = handle.read()
    settings = TrainSettings(
        model=args.model or "",
        dataset_uri=args.dataset_uri or "",
        output_uri=args.output_uri or "",
        hyperparameters=Hyperparameters.from_json(hyperparameters_text),
        checkpoint_uri=args.checkpoint_uri,
        checkpoint_interval_steps=_int(args.checkpoint_interval_steps, 500, "checkpoint interval"),
        keep_checkpoints=_int(args.keep_checkpoints, 3, "kept checkpoints"),
        run_name=args.run_name or "run",
        device=args.device or "auto",
        onnx_tolerance=_float(args.onnx_tolerance, 1e-4, "ONNX tolerance"),
        dataset_fingerprint=args.dataset_fingerprint,
        work_dir=args.work_dir or "/tmp/mlops-trainer",  # noqa: S108 - container scratch space
        tracking=TrackingSettings.from_env(),
    )
    return train(settings)


def _validate_data(args: argparse.Namespace) -> dict[str, Any]:
    from .dataset import DataContract, validate_dataset  # noqa: PLC0415
    from .errors import ConfigError, DataError  # noqa: PLC0415
    from .storage import open_store  # noqa: PLC0415

    if not args.dataset_uri:
        raise ConfigError(f"no data set: set {envvars.DATASET_URI} or --dataset-uri")
    report = validate_dataset(open_store(args.dataset_uri), DataContract.from_json(args.contract))
    result = report.to_json()
    for violation in report.violations:
        log.error("violation: %s", violation)
    if not report.valid:
        raise DataError(
            f"{len(report.violations)} contract violation(s); first: {report.violations[0]}",
            details={"validation": result},
        )
    return {"validation": result}


def _write_demo_data(args: argparse.Namespace) -> dict[str, Any]:
    from .demo_data import write_digits_to_store  # noqa: PLC0415
    from .errors import ConfigError  # noqa: PLC0415
    from .storage import open_store  # noqa: PLC0415

    if not args.dataset_uri:
        raise ConfigError(f"no target: set {envvars.DATASET_URI} or --dataset-uri")
    written = write_digits_to_store(open_store(args.dataset_uri))
    return {
        "dataset": {
            "uri": written.uri,
            "objectCount": written.object_count,
            "totalBytes": written.total_bytes,
            "fingerprint": written.fingerprint,
            "records": written.records,
        }
    }


def _compile(args: argparse.Namespace) -> dict[str, Any]:
    from .compiler import CompileSettings, compile_model, parse_dynamic_shapes  # noqa: PLC0415

    settings = CompileSettings(
        model_uri=args.model_uri or "",
        output_uri=args.output_uri or "",
        target=args.target or "tensorrt",
        precision=args.precision or "fp16",
        max_batch_size=_int(args.max_batch_size, 8, "max batch size"),
        dynamic_shapes=parse_dynamic_shapes(args.dynamic_shapes),
        workspace_mib=_int(args.workspace_mib, 1024, "workspace MiB"),
        calibration_dataset_uri=args.calibration_dataset_uri,
        calibration_max_samples=_int(args.calibration_max_samples, 512, "calibration samples"),
        calibration_batch_size=_int(args.calibration_batch_size, 32, "calibration batch size"),
    )
    return compile_model(settings)


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from .evaluate import EvaluateSettings, evaluate  # noqa: PLC0415

    settings = EvaluateSettings(
        engine_uri=args.engine_uri or "",
        dataset_uri=args.dataset_uri or "",
        split=args.split or "test",
        batch_size=_int(args.batch_size, 0, "batch size") or None,
        warmup_batches=_int(args.warmup_batches, 10, "warm-up batches"),
        latency_batches=_int(args.latency_batches, 100, "latency batches"),
    )
    return evaluate(settings)


def _drift(args: argparse.Namespace) -> dict[str, Any]:
    from .drift import DriftSettings, drift, parse_columns  # noqa: PLC0415

    column_threshold = args.column_threshold
    settings = DriftSettings(
        engine_uri=args.engine_uri or "",
        dataset_uri=args.dataset_uri or "",
        reference_uri=args.reference_uri or "",
        output_uri=args.output_uri or "",
        reference_dataset_uri=args.reference_dataset_uri,
        split=args.split or "test",
        method=args.method,
        column_threshold=None
        if column_threshold is None
        else _float(column_threshold, 0.0, "column threshold"),
        share_threshold=_float(
            args.share_threshold, drift_contract.DEFAULT_SHARE_THRESHOLD, "share threshold"
        ),
        columns=parse_columns(args.columns),
        max_samples=_int(args.max_samples, drift_contract.MAX_SAMPLES, "max samples"),
        reference_fingerprint=args.reference_fingerprint,
        current_fingerprint=args.current_fingerprint,
    )
    return drift(settings)


def _fetch_model_repository(args: argparse.Namespace) -> dict[str, Any]:
    from .model_repository import fetch_model_repository  # noqa: PLC0415

    return fetch_model_repository(args.repository_uri, args.repository_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlops-trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mlops-trainer {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        _flag(sub, "--termination-message-path", envvars.TERMINATION_MESSAGE_PATH,
              "where the JSON result goes (default /dev/termination-log)")  # fmt: skip
        return sub

    train = command("train", _train, "train a model from the registry on a data set")
    _flag(train, "--model", envvars.MODEL, "architecture name, e.g. digits-cnn")
    _flag(train, "--dataset-uri", envvars.DATASET_URI, "data-set prefix (s3://bucket/prefix/)")
    _flag(train, "--output-uri", envvars.OUTPUT_URI, "prefix for model.pt, model.onnx, metadata.json")
    _flag(
        train, "--checkpoint-uri", envvars.CHECKPOINT_URI, "checkpoint prefix; resumes from it when present"
    )
    _flag(
        train,
        "--checkpoint-interval-steps",
        envvars.CHECKPOINT_INTERVAL_STEPS,
        "checkpoint every N steps (500)",
    )
    _flag(train, "--keep-checkpoints", envvars.KEEP_CHECKPOINTS, "checkpoints kept (3)")
    _flag(train, "--hyperparameters", envvars.HYPERPARAMETERS, "JSON object of hyperparameters")
    _flag(train, "--hyperparameters-file", envvars.HYPERPARAMETERS_FILE, "file holding that JSON object")
    _flag(train, "--run-name", envvars.RUN_NAME, "run name (W&B run and artifact names)")
    _flag(train, "--device", envvars.DEVICE, "auto, cpu or cuda (auto)")
    _flag(train, "--onnx-tolerance", envvars.ONNX_TOLERANCE, "max abs ONNX-vs-PyTorch difference (1e-4)")
    _flag(
        train, "--dataset-fingerprint", envvars.DATASET_FINGERPRINT, "fail if the data's fingerprint differs"
    )
    _flag(train, "--work-dir", envvars.WORK_DIR, "local scratch (W&B files) (/tmp/mlops-trainer)")

    validate = command(
        "validate-data", _validate_data, "check a data set against its manifest, schema and contract"
    )
    _flag(validate, "--dataset-uri", envvars.DATASET_URI, "data-set prefix")
    _flag(validate, "--contract", envvars.DATA_CONTRACT, "JSON data contract (Dataset.spec.contract)")

    demo = command("write-demo-data", _write_demo_data, "write the digits demo data set to a prefix")
    _flag(demo, "--dataset-uri", envvars.DATASET_URI, "target prefix")

    compile_ = command(
        "compile", _compile, "build a TensorRT engine (or validated ONNX model) from a trained model"
    )
    _flag(compile_, "--model-uri", envvars.MODEL_URI, "training output prefix (model.onnx + metadata.json)")
    _flag(compile_, "--output-uri", envvars.OUTPUT_URI, "prefix for the engine and its metadata.json")
    _flag(
        compile_,
        "--target",
        envvars.COMPILE_TARGET,
        "tensorrt or onnx (tensorrt)",
        choices=["tensorrt", "onnx"],
    )
    _flag(
        compile_,
        "--precision",
        envvars.PRECISION,
        "fp32, fp16 or int8 (fp16)",
        choices=["fp32", "fp16", "int8"],
    )
    _flag(compile_, "--max-batch-size", envvars.MAX_BATCH_SIZE, "largest batch (8)")
    _flag(compile_, "--dynamic-shapes", envvars.DYNAMIC_SHAPES, "JSON list of {input, min, opt, max}")
    _flag(compile_, "--workspace-mib", envvars.WORKSPACE_MIB, "TensorRT workspace limit in MiB (1024)")
    _flag(
        compile_,
        "--calibration-dataset-uri",
        envvars.CALIBRATION_DATASET_URI,
        "data set for int8 calibration",
    )
    _flag(compile_, "--calibration-max-samples", envvars.CALIBRATION_MAX_SAMPLES, "calibration samples (512)")
    _flag(compile_, "--calibration-batch-size", envvars.CALIBRATION_BATCH_SIZE, "calibration batch (32)")

    evaluate = command("evaluate", _evaluate, "measure accuracy, latency and size of a compiled artifact")
    _flag(evaluate, "--engine-uri", envvars.ENGINE_URI, "compile output prefix")
    _flag(evaluate, "--dataset-uri", envvars.DATASET_URI, "data-set prefix")
    _flag(evaluate, "--split", envvars.EVAL_SPLIT, "split to score (test)")
    _flag(evaluate, "--batch-size", envvars.EVAL_BATCH_SIZE, "batch size (the engine's max)")
    _flag(evaluate, "--warmup-batches", envvars.EVAL_WARMUP_BATCHES, "untimed warm-up batches (10)")
    _flag(evaluate, "--latency-batches", envvars.EVAL_LATENCY_BATCHES, "timed batches (100)")

    check = command(
        "drift", _drift, "compare the current data with the served model's training data (Evidently)"
    )
    _flag(check, "--engine-uri", drift_contract.ENGINE_URI, "the served model's compile output prefix")
    _flag(check, "--dataset-uri", envvars.DATASET_URI, "the current data set's prefix")
    _flag(check, "--split", drift_contract.SPLIT, "split of the current data to check (test)")
    _flag(
        check, "--reference-uri", drift_contract.REFERENCE_URI, f"prefix of {drift_contract.REFERENCE_FILE}"
    )
    _flag(
        check,
        "--reference-dataset-uri",
        drift_contract.REFERENCE_DATASET_URI,
        "training data set, read only when the reference profile is missing",
    )
    _flag(check, "--output-uri", drift_contract.OUTPUT_URI, "prefix for the HTML report and result.json")
    # No argparse choices: a bad value, from the flag or the env, is a ConfigError with a summary.
    methods = ", ".join(sorted(drift_contract.METHODS))
    _flag(check, "--method", drift_contract.METHOD, f"test for every column: {methods} (Evidently chooses)")
    _flag(
        check, "--column-threshold", drift_contract.COLUMN_THRESHOLD, "the method's threshold (Evidently's)"
    )
    _flag(
        check,
        "--share-threshold",
        drift_contract.SHARE_THRESHOLD,
        f"drifted share of columns at which the data drifted ({drift_contract.DEFAULT_SHARE_THRESHOLD})",
    )
    _flag(check, "--columns", drift_contract.COLUMNS, "JSON list of columns to test (all)")
    _flag(
        check,
        "--max-samples",
        drift_contract.MAX_SAMPLES_ENV,
        f"rows sampled per side ({drift_contract.MAX_SAMPLES})",
    )
    _flag(
        check,
        "--reference-fingerprint",
        drift_contract.REFERENCE_FINGERPRINT,
        "fail if the training data's differs",
    )
    _flag(
        check,
        "--current-fingerprint",
        drift_contract.CURRENT_FINGERPRINT,
        "fail if the current data's differs",
    )

    fetch = command(
        "fetch-model-repository",
        _fetch_model_repository,
        "materialize a Triton model repository (repository.json + engine) in a local folder, checking sha256",
    )
    _flag(
        fetch, "--repository-uri", envvars.REPOSITORY_URI, "the repository's prefix (holds repository.json)"
    )
    _flag(fetch, "--repository-dir", envvars.REPOSITORY_DIR, "local folder tritonserver loads")
    return parser


def _writes_termination_message() -> bool:
    """Under torchrun several processes share a container: its local rank 0 writes the file."""
    return os.environ.get("LOCAL_RANK", "0") == "0"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get(envvars.LOG_LEVEL, "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    fields: dict[str, Any]
    try:
        fields = args.handler(args)
        code, reason, message = ExitCode.SUCCESS, "Succeeded", ""
    except TrainerError as exc:
        log.error("%s: %s", exc.reason, exc)
        code, reason, message, fields = exc.exit_code, exc.reason, str(exc), dict(exc.details)
    except Exception as exc:  # anything unforeseen is reported, then retried by the operator
        log.exception("unexpected failure")
        code, reason, message, fields = ExitCode.INTERNAL, "InternalError", f"{type(exc).__name__}: {exc}", {}
    fields["durationSeconds"] = round(time.monotonic() - started, 3)
    if _writes_termination_message():
        write_termination_message(
            summary(args.command, code, reason=reason, message=message, **fields),
            termination_message_path(args.termination_message_path),
        )
    return int(code)
