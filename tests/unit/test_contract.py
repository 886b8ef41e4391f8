"""The operator-workload contract (`mlops_contract`), and the operator reading and writing by it.

The trainer's side of the same contract is tested in tests/trainer/test_contract_agreement.py, which
also runs the operator's fingerprint and the trainer's over one listing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pytest
from mlops_contract import dataset, envvars, result
from mlops_contract.exitcodes import PERMANENT_EXIT_CODES, RETRYABLE_EXIT_CODES, ExitCode, is_retryable

from mlops_operator.api.v1alpha1 import DatasetSpec, TrainingRunSpec
from mlops_operator.builders import dataset as operator_dataset
from mlops_operator.builders.training import TrainingInputs, build_job
from mlops_operator.integrations.s3 import ObjectInfo
from mlops_operator.observation.training import classify_pod_failure
from tests.samples import load, valid_samples

# --- exit codes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "retryable"),
    [
        (ExitCode.SUCCESS, False),
        (ExitCode.INTERNAL, True),
        (ExitCode.USAGE, False),
        (ExitCode.DATA, False),
        (ExitCode.MODEL_CHECK, False),
        (ExitCode.RETRYABLE, True),
        (ExitCode.CONFIG, False),
        # 128 + SIGTERM, not handled (a drained node): the one the two sides disagreed on.
        (ExitCode.TERMINATED, True),
        (143, True),
        # Codes no workload uses are permanent: a segfault would only crash again.
        (137, False),
        (139, False),
        (3, False),
        (-1, False),
    ],
)
def test_retryable_exit_codes(code: int, retryable: bool) -> None:
    assert is_retryable(code) is retryable


def test_every_failure_code_is_either_retryable_or_permanent() -> None:
    assert {1, 75, 143} == RETRYABLE_EXIT_CODES
    assert not RETRYABLE_EXIT_CODES & PERMANENT_EXIT_CODES
    assert set(ExitCode) - {ExitCode.SUCCESS} == RETRYABLE_EXIT_CODES | PERMANENT_EXIT_CODES


def _failed_pod(code: int, message: str = "", reason: str = "Error") -> dict[str, Any]:
    terminated = {"exitCode": code, "message": message, "reason": reason}
    return {
        "metadata": {"annotations": {}},
        "status": {
            "phase": "Failed",
            "containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}],
        },
    }


@pytest.mark.parametrize("code", [c.value for c in ExitCode if c != ExitCode.SUCCESS] + [137, 139])
def test_the_operator_classifies_a_bare_exit_code_by_the_contract(code: int) -> None:
    """No summary (a crash before it was written, a log tail instead): the exit code decides."""
    failure = classify_pod_failure(_failed_pod(code, "Traceback (most recent call last): ..."))
    assert (failure.retryable, failure.reason, failure.exit_code) == (
        is_retryable(code),
        f"ExitCode{code}",
        code,
    )


def test_the_operator_reads_a_summary_the_contract_wrote() -> None:
    written = result.summary("train", ExitCode.RETRYABLE, reason="Preempted", message="SIGTERM at step 40")
    message = result.encode_summary(written).decode()
    failure = classify_pod_failure(_failed_pod(ExitCode.RETRYABLE, message))
    assert (failure.retryable, failure.reason, failure.message) == (True, "Preempted", "SIGTERM at step 40")
    # Under torchrun the pod's code is torchrun's own (1): the summary's verdict wins.
    config = result.summary("train", ExitCode.CONFIG, reason="InvalidConfig", message="unknown model")
    failure = classify_pod_failure(_failed_pod(1, result.encode_summary(config).decode()))
    assert (failure.retryable, failure.reason) == (False, "InvalidConfig")


# --- the result summary ----------------------------------------------------------------------------


@pytest.mark.parametrize("code", list(ExitCode))
def test_summary_retryable_and_status_follow_the_exit_code(code: ExitCode) -> None:
    value = result.summary("train", code, reason="Preempted" if code == ExitCode.RETRYABLE else "X")
    assert value[result.SCHEMA_FIELD] == result.SCHEMA == "mlops.dev/trainer-result/v1"
    assert value[result.RETRYABLE] is is_retryable(code)
    assert value[result.EXIT_CODE] == int(code)
    expected = {ExitCode.SUCCESS: result.SUCCEEDED, ExitCode.RETRYABLE: result.PREEMPTED}
    assert value[result.STATUS] == expected.get(code, result.FAILED)


def test_summary_round_trips_through_the_termination_message() -> None:
    value = result.summary(
        "train", ExitCode.SUCCESS, metrics={"accuracy": 0.97}, checkpoint={"uri": "s3://b/c/", "step": 40}
    )
    parsed = result.parse_summary(result.encode_summary(value))
    assert parsed == value
    assert result.is_summary(parsed)
    # None-valued fields are left out rather than written as null.
    assert "wandb" not in result.summary("train", ExitCode.SUCCESS, wandb=None)


def test_an_oversized_summary_is_trimmed_to_the_limit_keeping_the_essentials() -> None:
    value = result.summary(
        "train",
        ExitCode.DATA,
        reason="InvalidData",
        message='é"\\\n' * 5000,
        metrics={f"metric_{i}": float(i) for i in range(500)},
        details={"violations": ["x" * 100] * 100},
        artifacts={"model": "s3://bucket/" + "k" * 3000},
    )
    data = result.encode_summary(value)
    assert len(data) <= result.TERMINATION_MESSAGE_LIMIT == 4096
    trimmed = result.parse_summary(data)
    assert trimmed is not None
    assert trimmed[result.TRUNCATED] is True
    assert set(result.ESSENTIAL_FIELDS) <= set(trimmed)
    assert (trimmed["status"], trimmed["exitCode"], trimmed["reason"], trimmed["retryable"]) == (
        "Failed", 65, "InvalidData", False,
    )  # fmt: skip
    assert trimmed["message"].startswith("é")
    # A smaller limit is honoured too; fields are dropped least important first.
    small = result.encode_summary({**value, "message": "short"}, limit=1024)
    assert len(small) <= 1024
    assert "metrics" not in json.loads(small) or "details" not in json.loads(small)


def test_even_an_absurd_reason_cannot_push_the_summary_past_the_limit() -> None:
    value = result.summary("train", ExitCode.INTERNAL, reason="Why" * 3000, message="m" * 3000)
    data = result.encode_summary(value)
    assert len(data) <= result.TERMINATION_MESSAGE_LIMIT
    parsed = result.parse_summary(data)
    assert parsed is not None
    assert parsed["reason"] == ("Why" * 3000)[: result.ESSENTIAL_WORD_MAX]
    assert parsed["retryable"] is True


def test_a_summary_that_fits_is_left_whole() -> None:
    value = result.summary("evaluate", ExitCode.SUCCESS, metrics={"accuracy": 0.9, "p99Ms": 1.5})
    assert json.loads(result.encode_summary(value)) == value


def test_numbers_json_cannot_carry_are_refused_when_writing() -> None:
    with pytest.raises(ValueError, match="JSON"):
        result.encode_summary(result.summary("train", ExitCode.SUCCESS, metrics={"loss": float("nan")}))


@pytest.mark.parametrize(
    "message", [None, "", "Traceback (most recent call last):", "[1, 2]", '"text"', b"\xff\xfe{", "{"]
)
def test_what_is_not_a_json_object_is_no_summary(message: str | bytes | None) -> None:
    assert result.parse_summary(message) is None


def test_another_workloads_json_is_parsed_but_is_not_ours() -> None:
    parsed = result.parse_summary('{"accuracy": 0.5}')
    assert parsed == {"accuracy": 0.5}
    assert not result.is_summary(parsed)
    assert not result.is_summary({"schema": "mlops.dev/trainer-result/v0"})


# --- the dataset fingerprint and manifests --------------------------------------------------------


def test_fingerprint_formula() -> None:
    expected = "sha256:" + hashlib.sha256(b"a\t1\te1\nb/c\t2\te2\n").hexdigest()
    assert dataset.fingerprint([("b/c", 2, "e2"), ("a", 1, "e1")]) == expected
    assert dataset.fingerprint([("a", 1, "e1"), ("b/c", 2, "e2")]) == expected
    assert dataset.fingerprint([]) == "sha256:" + hashlib.sha256(b"").hexdigest()


def test_a_listing_counts_neither_folder_markers_nor_the_operators_folder() -> None:
    prefix = "datasets/v1/"
    listed = [
        ObjectInfo(prefix, 0, "d41d8cd98f00b204e9800998ecf8427e"),  # the prefix's own folder marker
        ObjectInfo(prefix + "train/", 0, "d41d8cd98f00b204e9800998ecf8427e"),
        ObjectInfo(prefix + "train/shard-00000.npz", 10, "e1"),
        ObjectInfo(prefix + ".mlops/manifest-0123456789abcdef.jsonl", 99, "e2"),
        ObjectInfo(prefix + "schema.json", 5, "e3"),
        ObjectInfo(prefix + "x.mlops/not-ours.bin", 7, "e4"),
    ]
    entries = dataset.listing_entries(listed, prefix)
    assert [e.key for e in entries] == ["schema.json", "train/shard-00000.npz", "x.mlops/not-ours.bin"]
    assert dataset.listing_fingerprint(listed, prefix) == dataset.fingerprint(
        [("schema.json", 5, "e3"), ("train/shard-00000.npz", 10, "e1"), ("x.mlops/not-ours.bin", 7, "e4")]
    )
    # The operator's manifest is a listing by the contract's rules.
    manifest = operator_dataset.manifest_from_listing(listed, prefix)
    assert manifest.fingerprint == dataset.listing_fingerprint(listed, prefix)
    assert manifest.object_count == 3


@dataclass(frozen=True)
class _Listed:
    key: str
    size: int
    etag: str


def test_a_listing_needs_only_key_size_and_etag() -> None:
    """The contract depends on neither side's S3 client: any object with these three will do."""
    assert dataset.listing_fingerprint([_Listed("a", 1, "e")]) == dataset.fingerprint([("a", 1, "e")])


def test_manifest_key_is_content_addressed_under_the_operators_folder() -> None:
    fingerprint = "sha256:" + "0123456789abcdef" + "f" * 48
    key = dataset.operator_manifest_key("datasets/v1/", fingerprint)
    assert key == "datasets/v1/.mlops/manifest-0123456789abcdef.jsonl"
    assert operator_dataset.manifest_key("datasets/v1/", fingerprint) == key
    # Writing it does not change the data's fingerprint: the folder is not data.
    assert not dataset.is_data_key(key.removeprefix("datasets/v1/"))
    assert dataset.operator_manifest_key("", fingerprint) == ".mlops/manifest-0123456789abcdef.jsonl"


def test_manifest_lines_round_trip_and_name_their_checksum() -> None:
    entries = [dataset.ManifestEntry("b", 2, "s2", 7), dataset.ManifestEntry("a", 1, "s1")]
    text = dataset.encode_manifest(entries)
    assert text.splitlines()[0] == json.dumps({"key": "a", "sha256": "s1", "size": 1}, sort_keys=True)
    assert dataset.parse_manifest(text) == sorted(entries)
    assert dataset.parse_manifest(text.encode()) == sorted(entries)
    # The operator's record of a listing names ETags `checksum`: readable, but not by a sha256 checker.
    listing = dataset.encode_manifest(entries, checksum_field=dataset.CHECKSUM_FIELD)
    assert '"checksum": "s1"' in listing
    assert dataset.parse_manifest(listing) == sorted(entries)
    with pytest.raises(dataset.ManifestError, match="line 1"):
        dataset.parse_manifest(listing, checksum_fields=(dataset.SHA256_FIELD,))


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ('{"key": "a", "size": 1, "sha256": "s"}\nnot json\n', "line 2"),
        ('{"key": "a", "sha256": "s"}\n', "line 1"),
        ('{"key": "a", "size": "big", "sha256": "s"}\n', "line 1"),
        ("[1, 2]\n", "line 1"),
        (b'{"key": "\xff", "size": 1, "sha256": "s"}\n', "not UTF-8"),
    ],
)
def test_malformed_manifests_say_where(data: str | bytes, fragment: str) -> None:
    with pytest.raises(dataset.ManifestError, match=fragment):
        dataset.parse_manifest(data)


def test_the_operator_reads_a_user_manifest_by_the_contract() -> None:
    text = dataset.encode_manifest([dataset.ManifestEntry("b", 5, "t"), dataset.ManifestEntry("a", 1, "s")])
    manifest = operator_dataset.manifest_from_jsonl(text)
    assert manifest.fingerprint == dataset.fingerprint([("a", 1, "s"), ("b", 5, "t")])
    with pytest.raises(operator_dataset.ManifestFormatError, match="line 1"):
        operator_dataset.manifest_from_jsonl('{"key": "a"}\n')


# --- environment variable names --------------------------------------------------------------------


def test_every_variable_the_operator_sets_on_the_trainer_is_a_contract_name() -> None:
    run = load(next(p for p in valid_samples() if "trainingrun" in p.name))
    data = load(next(p for p in valid_samples() if "dataset" in p.name))
    spec = TrainingRunSpec.model_validate(
        {**run["spec"], "distributed": {"nodes": 2, "procsPerNode": 2}, "resources": {"gpusPerWorker": 2}}
    )
    source = {**data["spec"]["source"], "endpointURL": "http://s3.local:9000", "region": "eu-west-1"}
    source["credentialsSecretRef"] = {"name": "s3", "sessionTokenKey": "token"}
    inputs = TrainingInputs(
        name="r1",
        namespace="ns",
        uid="uid-1",
        spec=spec,
        dataset=DatasetSpec.model_validate({**data["spec"], "source": source}),
        dataset_fingerprint=dataset.fingerprint([]),
        attempt=1,
        default_image="trainer:default",
    )
    container = build_job(inputs)["spec"]["template"]["spec"]["containers"][0]
    names = {e["name"] for e in container["env"]}
    contract_names = {v for k, v in vars(envvars).items() if k.isupper()}
    # HOME is the container's own (the scratch volume), not a workload setting.
    assert names - contract_names == {"HOME"}
    assert {envvars.MODEL, envvars.DATASET_FINGERPRINT, envvars.NODE_RANK, envvars.AWS_SESSION_TOKEN} <= names
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env[envvars.TERMINATION_MESSAGE_PATH] == result.TERMINATION_MESSAGE_PATH
    assert container["terminationMessagePath"] == result.TERMINATION_MESSAGE_PATH
