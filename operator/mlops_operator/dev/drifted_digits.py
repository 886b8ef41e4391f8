"""The drifted digits of `mlopsctl dev`'s drift loop: half the demo digits photographed brighter.

Two data sets, in the trainer's format (shards, schema.json, manifest last):
- `landed`: a batch of newly landed images: the demo's held-out digits, each as it was and made
  brighter, interleaved (half the sources now deliver brighter images), as the `test` split a
  DriftMonitor's check reads. A model trained on the demo data has never seen the brighter half.
- `labelled`: the training data that covers the shift: the demo's train and test splits, each with
  its images again made brighter (same labels), so a model trained on it reads both kinds, its
  held-out split scores a model on both, and its distribution is the landed batch's.

The transforms are pure numpy (`brighter`, `landed_batch`, `covering_splits`). Written by the trainer's
own writer, so this file runs in the trainer's venv (it has scikit-learn's digits and
`mlops_trainer`): `.venv-trainer/bin/python -P drifted_digits.py landed|labelled <prefix URI>`; it
prints the written data set (URI, objects, fingerprint, records) as JSON. `-P`: this folder holds
modules (mlflow.py, triton.py...) that must not shadow the trainer's imports.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

DIGITS_MAX_VALUE = 16  # the demo digits' intensities are 0..16 (mlops_trainer.demo_data)
# How much brighter the landed images are, in intensity steps of 16: the background turns from 0 to
# this, which the brightness/contrast columns of the drift check and the served model both notice.
BRIGHTNESS_SHIFT = 6

Images = npt.NDArray[np.uint8]
Labels = npt.NDArray[np.int64]
Splits = Mapping[str, tuple[npt.NDArray[Any], npt.NDArray[Any]]]


def brighter(
    images: npt.NDArray[Any], shift: int = BRIGHTNESS_SHIFT, max_value: int = DIGITS_MAX_VALUE
) -> Images:
    """The images with every pixel `shift` brighter, saturating at `max_value`, as uint8."""
    shifted = np.clip(images.astype(np.int64) + shift, 0, max_value)
    return shifted.astype(np.uint8)


def landed_batch(splits: Splits, shift: int = BRIGHTNESS_SHIFT) -> dict[str, tuple[Images, Labels]]:
    """A newly landed batch: each held-out image as it was, then made brighter, interleaved, as the
    `test` split a check reads (the labels are written because the format has them; a check does
    not read them)."""
    images, labels = splits["test"]
    mixed = np.empty((2 * len(labels), *images.shape[1:]), dtype=np.uint8)
    mixed[0::2], mixed[1::2] = np.asarray(images, dtype=np.uint8), brighter(images, shift)
    return {"test": (mixed, np.repeat(np.asarray(labels, dtype=np.int64), 2))}


def is_brighter(images: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """Which images were made brighter: no pixel is black (every demo digit has a black border)."""
    flat = np.asarray(images).reshape(len(images), -1)
    return np.asarray(flat.min(axis=1) > 0)


def covering_splits(splits: Splits, shift: int = BRIGHTNESS_SHIFT) -> dict[str, tuple[Images, Labels]]:
    """Each split with its images again made brighter, same labels: training data that covers the
    shift, and a held-out split that scores a model on both kinds of images."""
    covered: dict[str, tuple[Images, Labels]] = {}
    for name, (images, labels) in splits.items():
        covered[name] = (
            np.concatenate([np.asarray(images, dtype=np.uint8), brighter(images, shift)]),
            np.concatenate([np.asarray(labels, dtype=np.int64)] * 2),
        )
    return covered


KINDS = {"landed": landed_batch, "labelled": covering_splits}


def main(argv: Sequence[str]) -> int:
    """Write one of KINDS to a prefix URI with the trainer's writer (in the trainer's venv only)."""
    if len(argv) != 2 or argv[0] not in KINDS:
        print(f"usage: drifted_digits.py {'|'.join(KINDS)} <prefix URI>", file=sys.stderr)
        return 2
    kind, uri = argv
    demo = importlib.import_module("mlops_trainer.demo_data")
    storage = importlib.import_module("mlops_trainer.storage")
    written = demo.write_image_dataset(storage.open_store(uri), KINDS[kind](demo.digits_splits()))
    print(
        json.dumps(
            {
                "uri": written.uri,
                "objectCount": written.object_count,
                "fingerprint": written.fingerprint,
                "records": written.records,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
