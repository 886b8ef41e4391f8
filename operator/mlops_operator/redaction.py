"""Masking credentials in whatever the operator writes where others can read it.

Status, events and log lines are readable far more widely than the Secrets they might echo (anyone
who may `kubectl describe` a TrainingRun, anyone who reads the operator's logs). A trainer's
termination message or log tail, an error a library raised, a debug line: each passes through
`redact` before it leaves the operator. The engine's one status path (`handlers.base.status_patch`)
and every event (`k8s.events.event_manifest`) call it; `RedactingFilter` does it for every log line.

Patterns, not a list of known values: the operator never reads most of the Secrets its workloads
use (a W&B key goes from the Secret straight into the pod), so what is masked is anything shaped
like a credential: a value after a credential-like key (`password=`, `token:`, `WANDB_API_KEY=`,
`"SecretAccessKey": "…"`), an `Authorization: Bearer …`/`Basic …` header, a URL's user info, AWS
access key ids (also glued to other characters), `wandb login <key>`, a run of exactly 40 hex digits
(a W&B API key, also inside a path or URI) and a bare 40-character mixed-case base64 token (an AWS
secret access key). Keys of a mapping a workload fills (`status.metrics`) are redacted like values.
`redact` is idempotent, so a status that is redacted again compares equal and causes no write.
"""

from __future__ import annotations

import logging
import re

MASK = "***"

# A key that names a credential, in any case and style: password, db_password, X-Amz-Security-Token,
# aws_secret_access_key, SecretAccessKey, WANDB_API_KEY, apiKey, accessKeyId, Authorization.
_KEY = (
    r"[\w.-]*(?:secret|passw(?:or)?d|token|api[_-]?key|access[_-]?key|credential|authorization|"
    r"signature)[\w.-]*"
)
_KEYED_VALUE = re.compile(
    rf"(?i)(\b{_KEY}[\"']?\s*[:=]\s*[\"']?)((?:(?:bearer|basic|token)\s+)?[^\s\"',;&}}\]\)]+)"
)
_BEARER = re.compile(r"(?i)(\b(?:bearer|basic)\s+)([A-Za-z0-9._~+/=-]{8,})")
_URL_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^\s/:@]*:)([^\s/@]+)(@)")
_WANDB_LOGIN = re.compile(r"(?i)(\bwandb\s+login\s+(?:--?[\w-]+\s+)*)([^\s\"'-][^\s\"']*)")
# An AWS access key id, wherever it is: glued to other characters (`id_AKIA…`, `keyAKIA…`) too.
_AWS_KEY_ID = re.compile(r"(?:AKIA|ASIA)[A-Z0-9]{16}")
# A W&B API key: a run of exactly 40 hex digits, also as a path segment or glued to a name
# (`s3://b/<key>/x`, `runs/key_<key>`): a longer run is another digest (a sha256 has 64).
_HEX40 = re.compile(r"(?<![0-9a-fA-F])[0-9a-fA-F]{40}(?![0-9a-fA-F])")
# An AWS secret access key quoted without its key name ("key wJalr…"): 40 base64 characters standing
# alone or after an underscore (`name_<key>`), with upper and lower case letters and a digit (a name,
# a word or a path segment has not).
_B64_40 = re.compile(r"(?<![0-9A-Za-z/+=.:-])[0-9A-Za-z][0-9A-Za-z/+]{39}(?![0-9A-Za-z/+=.-])")


def _mask_b64(match: re.Match[str]) -> str:
    token = match.group(0)
    mixed = any(c.isupper() for c in token) and any(c.islower() for c in token)
    return MASK if mixed and any(c.isdigit() for c in token) else token


# A key that names a reference to a Secret (secretKeyRef, credentialsSecretRef.name), not a value:
# its value is a name a person needs to read (refresh_token is still a value).
_REFERENCE = re.compile(r"(?i)ref(?![a-z])")


def _mask_keyed(match: re.Match[str]) -> str:
    if _REFERENCE.search(match.group(1)):
        return match.group(0)
    return match.group(1) + MASK


def redact(text: str) -> str:
    """`text` with anything that looks like a credential replaced by `***`."""
    text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
    text = _KEYED_VALUE.sub(_mask_keyed, text)
    text = _URL_USERINFO.sub(lambda m: m.group(1) + MASK + m.group(3), text)
    text = _WANDB_LOGIN.sub(lambda m: m.group(1) + MASK, text)
    text = _AWS_KEY_ID.sub(MASK, text)
    text = _B64_40.sub(_mask_b64, text)
    return _HEX40.sub(MASK, text)


class RedactingFilter(logging.Filter):
    """Redact every record a handler emits: the formatted message, and the traceback text."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed log call: leave it to logging's own error path
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


# Libraries whose DEBUG lines carry request headers (botocore prints the signed Authorization
# header and the credential scope; urllib3 and the kubernetes client can print bearer tokens).
WIRE_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "kubernetes.client.rest")


def secure_logging(root: logging.Logger | None = None) -> None:
    """Keep wire-level loggers at INFO or above (even with MLOPS_VERBOSE), and redact every line
    the root logger's handlers write."""
    for name in WIRE_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.INFO:
            logger.setLevel(logging.INFO)
    root = root or logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
