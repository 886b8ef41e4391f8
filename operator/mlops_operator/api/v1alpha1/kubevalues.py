"""Kubernetes' own rules for the values a spec copies into Pods, Jobs, Services and labels.

The operator copies quantities, tolerations, node selectors, Secret keys, images and names from a
spec into the children it builds. Kubernetes refuses a child whose values break its rules, late and
far from the user; these rules refuse them at `kubectl apply` instead. Each is what
k8s.io/apimachinery (v0.35) checks, written as a regex (an OpenAPI `pattern`, which the apiserver
and pydantic both enforce) or, where a regex cannot say it, as CEL for the apiserver plus the Python
function below, a line-by-line port of the Go code, so `mlopsctl validate` gives the same verdict.

Python twins use `re.fullmatch`: Go's `$` matches only at the end of the text, Python's also before
a final newline.
"""

from __future__ import annotations

import re

# --- k8s.io/apimachinery/pkg/util/validation ---------------------------------------------------

# RFC 1123 label (IsDNS1123Label), at most 63 characters.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# RFC 1123 subdomain (IsDNS1123Subdomain), at most 253 characters: Secret, ServiceAccount and
# PriorityClass names, and the prefix of a label key.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_SUBDOMAIN_MAX = 253

# The name part of a label key (content.IsLabelKey), at most 63 characters.
_LABEL_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
LABEL_NAME_MAX = 63
# A label key ("qualified name"): [DNS subdomain prefix "/"] name. The prefix's length (<= 253)
# is not a regex matter, hence `LABEL_KEY_CEL` and `is_label_key`.
LABEL_KEY_MAX = DNS_SUBDOMAIN_MAX + 1 + LABEL_NAME_MAX
# A label value (content.IsLabelValue): empty, or a label name; at most 63 characters.
LABEL_VALUE = rf"^({_LABEL_NAME})?$"
LABEL_VALUE_MAX = 63

# A ConfigMap or Secret key (IsConfigMapKey; a Pod refuses a secretKeyRef.key that breaks it):
# [-._a-zA-Z0-9]+, at most 253 characters, and not ".", ".." or anything starting with "..". An
# optional first dot followed by a non-dot says all of it in one regex.
CONFIG_MAP_KEY = r"^\.?[-_a-zA-Z0-9][-._a-zA-Z0-9]*$"
CONFIG_MAP_KEY_MAX = 253

# --- k8s.io/apimachinery/pkg/api/resource ------------------------------------------------------

# The documented quantity grammar (the regex controller-gen emits for resource.Quantity), with an
# integer exponent as ParseQuantity requires. `isQuantity()` (ParseQuantity itself) also refuses an
# exponent beyond int64; the comparison with 0 refuses negatives, as Pod validation does.
QUANTITY_GRAMMAR = r"^[+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?[0-9]+))?$"
QUANTITY_MAX = 64
# A CEL raw string: the regex's backslashes reach RE2 as they are.
QUANTITY_CEL = (
    f"self.matches(r'{QUANTITY_GRAMMAR}') && isQuantity(self) && !quantity(self).isLessThan(quantity('0'))"
)

# --- container images ---------------------------------------------------------------------------

# Pod validation refuses an image with leading or trailing whitespace; an image reference is
# printable ASCII without spaces anywhere (the kubelet refuses anything else as InvalidImageName).
IMAGE = r"^[!-~]+$"
IMAGE_MAX = 512

# --- URLs the workloads and the operator's clients are handed ----------------------------------

# http(s), a host (DNS name as botocore accepts it: labels of letters, digits and '-', an optional
# final dot; an IPv4 address; or a bracketed IPv6 address), an optional port 1-65535, then an
# optional path/query of printable ASCII. No user:password@ (credentials live in Secrets).
_HOST_LABEL = r"[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
_HOST = rf"({_HOST_LABEL}\.)*{_HOST_LABEL}\.?"
_IPV6 = r"\[[0-9A-Fa-f]{0,4}(:[0-9A-Fa-f]{0,4}){2,7}\]"
_PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
HTTP_URL = rf"^https?://({_HOST}|{_IPV6})(:{_PORT})?([/?#][!-~]*)?$"
HTTP_URL_MAX = 1024

# An AWS region as botocore accepts it (validate_region_name: a host label, not all digits).
AWS_REGION = r"^([0-9]*[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?|[0-9]+-[-a-zA-Z0-9]*[a-zA-Z0-9])$"
AWS_REGION_MAX = 63


# --- Python twins of what CEL checks ------------------------------------------------------------

LABEL_KEY_CEL = "!format.qualifiedName().validate(self).hasValue()"


def is_dns1123_subdomain(value: str) -> bool:
    """validation.IsDNS1123Subdomain."""
    return len(value) <= DNS_SUBDOMAIN_MAX and re.fullmatch(DNS_SUBDOMAIN, value) is not None


def is_label_key(value: str) -> bool:
    """content.IsLabelKey (IsQualifiedName), which CEL's format.qualifiedName() runs."""
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix or not is_dns1123_subdomain(prefix):
            return False
    else:
        return False
    # len() counts bytes in Go; the regex admits only ASCII, so characters and bytes agree.
    return 0 < len(name) <= LABEL_NAME_MAX and re.fullmatch(_LABEL_NAME, name) is not None


def is_label_value(value: str) -> bool:
    """content.IsLabelValue."""
    return len(value) <= LABEL_VALUE_MAX and re.fullmatch(LABEL_VALUE, value) is not None


_SUFFIX_CHARS = frozenset("eEinumkKMGTP")
_DIGITS = frozenset("0123456789")
_SI_SUFFIXES = {"": 0, "n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY_SUFFIXES = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_INT64 = 2**63
_INT32 = 2**31
_MAX_INT64_FACTORS = 18


def _int32(value: int) -> int:
    return (value + _INT32) % (2 * _INT32) - _INT32


def quantity_sign(text: str) -> int | None:
    """The sign (-1, 0, 1) of `text` as resource.ParseQuantity reads it, or None where it refuses
    it: the Python twin of CEL's isQuantity() and quantity(...).sign()."""
    if not text:
        return None
    if text == "0":
        return 0
    # parseQuantityString
    positive, pos, end = True, 0, len(text)
    if text[0] in "+-":
        positive = text[0] == "+"
        pos = 1
    while pos < end and text[pos] == "0":
        pos += 1
    if pos >= end:
        return 0
    start = pos
    while pos < end and text[pos] in _DIGITS:
        pos += 1
    num, denom = text[start:pos] or "0", ""
    if pos < end and text[pos] == ".":
        pos += 1
        start = pos
        while pos < end and text[pos] in _DIGITS:
            pos += 1
        denom = text[start:pos]
    value = text[:pos]
    suffix_start = pos
    while pos < end and text[pos] in _SUFFIX_CHARS:
        pos += 1
    if pos < end and text[pos] in "+-":
        pos += 1
    while pos < end and text[pos] in _DIGITS:
        pos += 1
    if pos < end:
        return None  # ErrFormatWrong
    suffix = text[suffix_start:]
    # suffixer.interpret
    if suffix in _SI_SUFFIXES:
        binary, exponent = False, _SI_SUFFIXES[suffix]
    elif suffix in _BINARY_SUFFIXES:
        binary, exponent = True, _BINARY_SUFFIXES[suffix]
    elif len(suffix) > 1 and suffix[0] in "eE" and re.fullmatch(r"[+-]?[0-9]+", suffix[1:]):
        parsed = int(suffix[1:])
        if not -_INT64 <= parsed < _INT64:
            return None  # ErrSuffix (strconv.ParseInt out of range)
        binary, exponent = False, _int32(parsed)
    else:
        return None  # ErrSuffix
    # ParseQuantity: the int64 fast path cannot fail; the inf.Dec path needs a digit in `value`.
    if binary:
        fast = not denom and 15 - len(num) - int(exponent * 3 / 10) - 1 >= 0
    else:
        fast = _MAX_INT64_FACTORS - len(num) - len(denom) >= 0 and _int32(exponent - len(denom)) >= -9
    if not fast and not _DIGITS.intersection(value):
        return None  # ErrNumeric
    if set(num + denom) <= {"0"}:
        return 0
    return 1 if positive else -1


def is_nonnegative_quantity(text: str) -> bool:
    """The twin of QUANTITY_CEL."""
    if re.fullmatch(QUANTITY_GRAMMAR, text) is None:
        return False
    sign = quantity_sign(text)
    return sign is not None and sign >= 0
