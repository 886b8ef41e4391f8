"""`mlopsctl`: run the operator, generate CRDs, validate manifests."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from . import crdgen
from .api.validation import ManifestError, load_manifests, validate_manifest


def _cmd_crds(args: argparse.Namespace) -> int:
    for path in crdgen.write(Path(args.out)):
        print(path)
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    """The apiserver's verdict on each document, read as kubectl reads YAML."""
    failed = 0
    for name in args.files:
        try:
            docs = load_manifests(Path(name).read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            failed += 1
            print(f"INVALID {name}: cannot read it as YAML: {exc}", file=sys.stderr)
            continue
        for index, doc in enumerate(docs):
            if not isinstance(doc, dict):
                failed += 1
                print(f"INVALID {name}#{index}: not an object but {type(doc).__name__}", file=sys.stderr)
                continue
            metadata = doc.get("metadata")
            object_name = metadata.get("name") if isinstance(metadata, dict) else None
            label = f"{name}#{index} {doc.get('kind')}/{object_name}"
            try:
                validate_manifest(doc)
            except ManifestError as exc:
                failed += 1
                print(f"INVALID {label}", file=sys.stderr)
                for line in exc.errors:
                    print(f"  {line}", file=sys.stderr)
            else:
                print(f"ok {label}")
    return 1 if failed else 0


def _cmd_run(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415 - kopf is only imported when the operator runs

    import kopf  # noqa: PLC0415

    from . import main as _wiring  # noqa: F401, PLC0415 - registers the handlers
    from .settings import OperatorConfig  # noqa: PLC0415

    config = OperatorConfig()
    kopf.configure(
        verbose=config.verbose,
        log_format=kopf.LogFormat.JSON if config.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    if not config.verbose:
        # kopf logs "Handler 'cache' succeeded" for every watch event it hands to the engine: at
        # 10,000 objects that is noise, and CPU. Its warnings and errors still show.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # Never print Secret data or signed request headers, verbose or not: botocore's DEBUG lines
    # carry the signed Authorization header; every line is redacted on its way out.
    from .redaction import secure_logging  # noqa: PLC0415

    secure_logging()
    liveness = f"http://0.0.0.0:{config.health_port}/healthz" if config.health_port else None
    asyncio.run(
        kopf.operator(
            clusterwide=not config.namespaces,
            namespaces=config.namespaces,
            standalone=config.peering_name is None,
            peering_name=config.peering_name,
            priority=config.peering_priority,
            liveness_endpoint=liveness,
        )
    )
    return 0


def _cmd_dev(args: argparse.Namespace) -> int:
    from .dev import pipeline  # noqa: PLC0415 - needs the local extras (moto, cryptography)

    return pipeline.run(
        Path(args.samples), Path(args.crds), namespace=args.namespace, keep=args.keep, kueue=args.kueue
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlopsctl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator (settings from MLOPS_* env vars)")
    run.set_defaults(func=_cmd_run)

    crds = sub.add_parser("crds", help="write the CRDs generated from the API models")
    crds.add_argument("--out", default="crds", help="output directory (default: crds)")
    crds.set_defaults(func=_cmd_crds)

    dev = sub.add_parser("dev", help="run the sample pipeline on a local control plane")
    dev.add_argument("--samples", default="samples", help="directory of manifests to apply")
    dev.add_argument("--crds", default="crds", help="directory of CRDs to install")
    dev.add_argument("--namespace", default="mlops-demo")
    dev.add_argument("--keep", action="store_true", help="keep everything running until Ctrl-C")
    dev.add_argument(
        "--kueue",
        action="store_true",
        help="also run a real Kueue (hack/build-tools.sh builds it), with a LocalQueue `default`",
    )
    dev.set_defaults(func=_cmd_dev)

    validate = sub.add_parser("validate", help="check manifests against the API models")
    validate.add_argument("files", nargs="+")
    validate.set_defaults(func=_cmd_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
