"""Which user-supplied URLs the operator itself may send requests to (no SSRF).

A Dataset's `endpointURL` makes the operator send requests, signed with the tenant's credentials,
from the operator's own network position: to a cloud metadata service, a cluster-internal admin
port, another tenant's service. So the operator talks only to endpoints its administrator allowed
(`MLOPS_S3_ENDPOINT_ALLOWLIST`); with an empty list, only AWS's own S3 endpoints. Every integration
that sends a request to a URL taken from a spec checks it here first, before any client is built.
(Workload pods get such URLs as env vars: that is the tenant's own pod on the tenant's network
position, not the operator's, and is not checked here.)

Patterns: `host` (any port) or `host:port`; a host may start with `*.` for any subdomain
(`*.minio.example.com`); IPv6 literals in brackets (`[::1]`, `[::1]:9000`). Hosts compare case-
insensitively and literally: no DNS lookup (what a name resolves to is the administrator's choice).

The same check guards URLs the operator does not call itself but hands to a cluster-wide controller
that does: an InferenceDeployment's `prometheusAddress` is queried by the Argo Rollouts controller
from its own network position (`MLOPS_PROMETHEUS_ENDPOINT_ALLOWLIST`; `aws_s3=False`: no host is
allowed by default there).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import urlsplit

# AWS's S3 endpoints: s3.amazonaws.com, s3.<region>.amazonaws.com, s3-<region>.amazonaws.com,
# s3.dualstack.<region>.amazonaws.com, s3-fips.<region>.amazonaws.com, virtual-hosted
# <bucket>.s3.<region>.amazonaws.com, interface VPC endpoints (…s3.<region>.vpce.amazonaws.com),
# and the China partition (….amazonaws.com.cn).
AWS_S3_HOST = re.compile(r"^([a-z0-9-]+\.)*s3([.-][a-z0-9-]+)*\.amazonaws\.com(\.cn)?$")

_DEFAULT_PORTS = {"http": 80, "https": 443}


class EndpointNotAllowedError(Exception):
    """The URL is not on the operator's allow-list; the message says what to change."""


def _host_port(url: str) -> tuple[str, int | None, str]:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower().rstrip(".")
    try:
        port = parts.port
    except ValueError:
        port = None
    return host, port or _DEFAULT_PORTS.get(parts.scheme.lower()), parts.scheme.lower()


def _pattern_matches(pattern: str, host: str, port: int | None) -> bool:
    pattern = pattern.strip().lower()
    if pattern.startswith("["):  # [v6] or [v6]:port
        literal, _, rest = pattern[1:].partition("]")
        want_host, want_port = literal, rest.removeprefix(":") or None
    elif pattern.count(":") == 1:
        want_host, want_port = pattern.split(":")
    else:
        want_host, want_port = pattern, None
    want_host = want_host.rstrip(".")
    if want_port is not None and (not want_port.isdigit() or int(want_port) != port):
        return False
    if want_host.startswith("*."):
        return host.endswith(want_host[1:]) and len(host) > len(want_host) - 1
    return host == want_host


def host_pattern(url: str) -> str | None:
    """The allow-list pattern that admits exactly `url`'s host and port (`host:port`, `[v6]:port`),
    or None when `url` has no host."""
    host, port, _ = _host_port(url)
    if not host:
        return None
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if port else shown


def endpoint_allowed(url: str | None, allowlist: Sequence[str], *, aws_s3: bool = True) -> bool:
    """Whether the operator may send requests to `url` (None: the SDK's default AWS endpoint).
    `aws_s3`: AWS's own S3 endpoints are allowed without being listed (S3 and its registries)."""
    if url is None:
        return True
    host, port, scheme = _host_port(url)
    if not host or scheme not in _DEFAULT_PORTS:
        return False
    if aws_s3 and AWS_S3_HOST.match(host):
        return True
    return any(_pattern_matches(p, host, port) for p in allowlist)


def require_allowed(url: str | None, allowlist: Sequence[str], *, setting: str, aws_s3: bool = True) -> None:
    """Raise `EndpointNotAllowedError` unless the operator may send requests to `url`."""
    if endpoint_allowed(url, allowlist, aws_s3=aws_s3):
        return
    host, port, _ = _host_port(url or "")
    where = f"{host}:{port}" if port else host or repr(url)
    if aws_s3:
        allowed = ", ".join(allowlist) if allowlist else "none besides AWS's own S3 endpoints"
        hint = "Use an AWS S3 endpoint, or ask the operator's administrator to allow this one"
    else:
        allowed = ", ".join(allowlist) if allowlist else "empty"
        hint = "Ask the operator's administrator to allow this one"
    raise EndpointNotAllowedError(
        f"endpoint {where} is not on the operator's allow-list ({setting}: {allowed}); no request "
        f"was sent. {hint}"
    )
