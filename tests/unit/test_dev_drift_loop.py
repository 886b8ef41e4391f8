"""The pure pieces of `mlopsctl dev`'s drift loop: the drifted digits, the patches it applies, and how
it reads the pipeline's runs and the monitor's check. The loop itself runs in `make dev`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlops_operator.api.v1alpha1 import DatasetSpec, InferenceDeploymentSpec, ModelPipelineSpec
from mlops_operator.dev import drift_loop, drifted_digits
from tests.samples import SAMPLES, load

RNG = np.random.default_rng(0)
SPLITS = {
    "train": (RNG.integers(0, 17, size=(20, 8, 8)).astype(np.uint8), np.arange(20, dtype=np.int64) % 10),
    "test": (RNG.integers(0, 17, size=(6, 8, 8)).astype(np.uint8), np.arange(6, dtype=np.int64) % 10),
}


def test_brighter_shifts_every_pixel_and_saturates_at_the_digits_maximum():
    images = np.array([[[0, 3], [10, 16]]], dtype=np.uint8)
    out = drifted_digits.brighter(images, shift=6)
    assert out.dtype == np.uint8
    assert out.tolist() == [[[6, 9], [16, 16]]]
    assert images.tolist() == [[[0, 3], [10, 16]]]  # the input is untouched


def test_the_landed_batch_interleaves_each_held_out_image_with_its_brighter_copy():
    landed = drifted_digits.landed_batch(SPLITS)
    assert list(landed) == ["test"]
    images, labels = landed["test"]
    test_images, test_labels = SPLITS["test"]
    assert images.dtype == np.uint8
    assert labels.dtype == np.int64
    assert np.array_equal(images[0::2], test_images)
    assert np.array_equal(images[1::2], drifted_digits.brighter(test_images))
    assert labels.tolist() == [int(label) for label in test_labels for _ in range(2)]


def test_is_brighter_tells_the_brightened_images_from_digits_with_a_black_border():
    digits = np.zeros((3, 8, 8), dtype=np.uint8)
    digits[:, 2:6, 2:6] = 12  # a stroke on a black border, as every demo digit has
    images, _ = drifted_digits.landed_batch({"test": (digits, np.arange(3))})["test"]
    assert drifted_digits.is_brighter(images).tolist() == [False, True] * 3
    scaled = images[:, None, :, :].astype(np.float32) / 16  # as read for Triton: same answer
    assert drifted_digits.is_brighter(scaled).tolist() == [False, True] * 3


def test_the_covering_data_holds_each_split_as_it_was_and_made_brighter_with_the_same_labels():
    covered = drifted_digits.covering_splits(SPLITS)
    assert set(covered) == {"train", "test"}
    for name, (images, labels) in SPLITS.items():
        got_images, got_labels = covered[name]
        n = len(labels)
        assert got_images.shape == (2 * n, 8, 8)
        assert got_images.dtype == np.uint8
        assert np.array_equal(got_images[:n], images)
        assert np.array_equal(got_images[n:], drifted_digits.brighter(images))
        assert got_labels.dtype == np.int64
        assert np.array_equal(got_labels, np.concatenate([labels, labels]))


def test_the_writer_refuses_an_unknown_kind_before_touching_the_trainer(capsys: pytest.CaptureFixture[str]):
    assert drifted_digits.main(["sideways", "s3://b/p/"]) == 2
    assert drifted_digits.main(["landed"]) == 2
    assert "landed|labelled" in capsys.readouterr().err


def test_follow_patch_swaps_the_named_version_for_the_pipeline():
    spec = load(SAMPLES / "04-inferencedeployment.yaml")["spec"]
    patched = _merge(spec, drift_loop.follow_patch("digits")["spec"])
    assert "modelVersionRef" not in patched
    assert patched["modelVersionFrom"] == {"pipelineRef": {"name": "digits"}}
    followed = InferenceDeploymentSpec.model_validate(patched)  # exactly one of the two: valid
    assert followed.model_version_from is not None
    assert followed.model_version_ref is None


def test_the_demo_gate_is_a_valid_promotion_of_the_sample_pipeline():
    spec = load(SAMPLES / "06-modelpipeline.yaml")["spec"]
    promotion = ModelPipelineSpec.model_validate({**spec, "promotion": drift_loop.GATE}).promotion
    assert promotion.champion_gate is not None
    assert [(m.name, m.direction, m.margin) for m in promotion.champion_gate.metrics] == [
        ("accuracy", "HigherIsBetter", 0.01)
    ]
    assert promotion.approval == "Automatic"


def test_dataset_at_copies_the_sample_dataset_to_another_prefix_and_name():
    sample = load(SAMPLES / "01-dataset.yaml")
    landed = drift_loop.dataset_at(sample, "digits-landed", "s3://mlops-demo/datasets/digits-landed/batch-1")
    assert landed["metadata"] == {"name": "digits-landed"}
    source = landed["spec"]["source"]
    assert source["uri"] == "s3://mlops-demo/datasets/digits-landed/batch-1/"
    assert source["manifestURI"] == "s3://mlops-demo/datasets/digits-landed/batch-1/manifest.jsonl"
    assert source["credentialsSecretRef"] == sample["spec"]["source"]["credentialsSecretRef"]
    assert source["endpointURL"] == sample["spec"]["source"]["endpointURL"]
    assert sample["spec"]["source"]["uri"] == "s3://mlops-demo/datasets/digits/v1/"  # sample untouched
    DatasetSpec.model_validate(landed["spec"])


def test_source_patch_moves_a_dataset_to_the_new_version_of_its_data():
    sample = load(SAMPLES / "01-dataset.yaml")
    patched = _merge(sample["spec"], drift_loop.source_patch("s3://mlops-demo/datasets/digits/v2")["spec"])
    assert patched["source"]["uri"] == "s3://mlops-demo/datasets/digits/v2/"
    assert patched["source"]["manifestURI"] == "s3://mlops-demo/datasets/digits/v2/manifest.jsonl"
    assert patched["source"]["region"] == sample["spec"]["source"]["region"]
    DatasetSpec.model_validate(patched)


RUNS = {
    "runs": [
        {"name": "digits-1", "number": 1, "outcome": "Promoted", "datasetFingerprint": "sha256:a"},
        {"name": "digits-2", "number": 2, "outcome": "Skipped", "datasetFingerprint": "sha256:b"},
        {"name": "digits-3", "number": 3, "outcome": "Running", "datasetFingerprint": "sha256:b"},
    ]
}


def test_the_run_on_new_data_is_the_latest_that_is_not_a_skipped_trigger():
    assert drift_loop.run_on(RUNS, "sha256:b") == RUNS["runs"][2]
    assert drift_loop.run_on(RUNS, "sha256:c") is None
    assert drift_loop.run_on({}, "sha256:a") is None
    assert drift_loop.first_run(RUNS) == RUNS["runs"][0]
    assert drift_loop.run_named(RUNS, "digits-2") == RUNS["runs"][1]


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        ("Promoted", None),
        ("Running", None),
        ("AwaitingApproval", None),
        ("Rejected", "pipeline run digits-2 was Rejected: accuracy 0.90 < 0.95"),
        ("Failed", "pipeline run digits-2 was Failed: accuracy 0.90 < 0.95"),
    ],
)
def test_a_run_falls_short_once_it_settled_without_a_promotion(outcome: str, expected: str | None):
    run = {"name": "digits-2", "outcome": outcome, "message": "accuracy 0.90 < 0.95"}
    assert drift_loop.run_shortfall(run) == expected


def test_gate_lines_show_both_figures_the_margin_and_the_verdict():
    run = {
        "modelVersion": "digits-2",
        "champion": "digits-1",
        "comparison": [
            {
                "name": "accuracy",
                "challenger": 0.98,
                "champion": 0.8777,
                "direction": "HigherIsBetter",
                "margin": 0.01,
                "passed": True,
            },
            {
                "name": "latency_p95_ms",
                "challenger": 0.5,
                "champion": 0.4,
                "direction": "LowerIsBetter",
                "margin": 0,
                "passed": False,
            },
        ],
    }
    assert drift_loop.gate_lines(run) == [
        "accuracy: challenger digits-2 0.9800 vs champion digits-1 0.8777 (must be higher by 0.01): passed",
        "latency_p95_ms: challenger digits-2 0.5000 vs champion digits-1 0.4000 (must be lower by 0): failed",
    ]
    first = {"message": "digits-1 is the pipeline's first version: no champion to compare with"}
    assert drift_loop.gate_lines(first) == [f"no comparison: {first['message']}"]


def test_drift_lines_list_the_drifted_columns_with_method_score_threshold_and_the_report():
    status = {
        "driftShare": 0.75,
        "shareThreshold": 0.5,
        "driftedCount": 2,
        "columnCount": 3,
        "driftedColumns": "brightness,predicted_class",
        "columns": [
            {"name": "brightness", "method": "wasserstein", "score": 9.35, "threshold": 0.1, "drifted": True},
            {
                "name": "predicted_class",
                "method": "jensenshannon",
                "score": 0.17,
                "threshold": 0.1,
                "drifted": True,
            },
            {"name": "width", "method": "jensenshannon", "score": 0.0, "threshold": 0.1, "drifted": False},
        ],
        "reportURI": "s3://mlops-demo/drift/digits/check-1/report.html",
    }
    assert drift_loop.drift_lines(status) == [
        "drift share 0.7500 (threshold 0.5): 2 of 3 columns drifted (brightness,predicted_class)",
        "  brightness: wasserstein 9.3500 (threshold 0.1)",
        "  predicted_class: jensenshannon 0.1700 (threshold 0.1)",
        "report: s3://mlops-demo/drift/digits/check-1/report.html",
    ]


def test_serving_summary_says_what_the_follower_resolved_to_and_the_canary():
    status = {
        "phase": "Progressing",
        "modelVersion": "digits-2",
        "stableVersion": "digits-1",
        "canaryVersion": "digits-2",
        "canaryWeight": 10,
        "currentStep": 1,
        "resolvedFrom": {"pipeline": "digits", "modelVersion": "digits-2"},
    }
    assert drift_loop.serving_summary(status) == (
        "follows ModelPipeline digits, resolved to digits-2; phase Progressing, rolling out digits-2: "
        "stable digits-1, canary digits-2 at 10% (step 1)"
    )
    named = {"phase": "Available", "modelVersion": "digits-cnn-v1", "stableVersion": "digits-cnn-v1"}
    assert drift_loop.serving_summary(named) == (
        "phase Available, rolling out digits-cnn-v1: stable digits-cnn-v1"
    )


def test_the_showcased_image_is_one_the_new_version_fixed_else_one_it_gets_right():
    labels = np.array([7, 3, 8, 1])
    new = np.array([7, 3, 5, 1])
    old = np.array([7, 8, 5, 1])
    assert drift_loop.showcase_index(labels, new, old) == 1  # the 3 the old version took for an 8
    assert drift_loop.showcase_index(labels, new, new) == 0  # nothing fixed: the first it gets right
    assert drift_loop.showcase_index(labels, np.array([0, 3, 0, 0]), None) == 1
    assert drift_loop.showcase_index(labels, np.zeros(4, dtype=np.int64), old) == 0  # all wrong: the first


def test_a_step_that_times_out_names_itself_and_says_why():
    # _wait uses nothing of the control plane: the loop's other fields are not needed here.
    loop = drift_loop.DriftLoop(None, "ns", [], None, None, Path("python"))  # type: ignore[arg-type]
    calls: list[int] = []

    def probe() -> dict[str, Any] | None:
        calls.append(1)
        return {"found": True} if len(calls) == 2 else None

    assert loop._wait("never", probe, 30) == {"found": True}
    with pytest.raises(drift_loop.StageFailedError) as raised:
        loop._wait("DriftMonitor digits did not turn Drifted", lambda: None, 0, why=lambda: "phase Checking")
    assert (
        str(raised.value) == "drift loop: DriftMonitor digits did not turn Drifted within 0s (phase Checking)"
    )
    with pytest.raises(drift_loop.StageFailedError, match=r"^drift loop: the samples have no DriftMonitor$"):
        loop._doc("DriftMonitor")


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch, as `kubectl patch --type=merge` applies it."""
    out: dict[str, Any] = json.loads(json.dumps(target))
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
