#!/usr/bin/env bash
# Build (from Go modules) and cache the binaries the mlops-operator test/dev
# harness needs: kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, etcd, kwok, helm, promtool, prometheus, rollouts-controller, kueue -- plus the Argo Rollouts CRDs,
# Kueue's CRDs and webhook manifests,
# the Prometheus Operator's monitoring.coreos.com CRDs the chart's optional objects use, and kwok
# stage YAMLs.
#
# Nothing is downloaded from GitHub releases: every tool is compiled from its Go
# module (fetched through GOPROXY) inside a small generated wrapper module, one
# per tool, so that `replace` directives in upstream go.mod files (which make
# `go install pkg@version` refuse k8s.io/kubernetes, etcd and argo-rollouts)
# and version clashes between tools do not matter.
#
# Usage:
#   hack/build-tools.sh               build what is missing; stdout = bin dir
#   hack/build-tools.sh --print-dir   print the bin dir only (no build); exit 3
#                                     if the tools have not been built yet
#   hack/build-tools.sh --check       verify the cached tools, build nothing
#   hack/build-tools.sh --force       rebuild everything
#
# All progress output goes to stderr; stdout carries only the bin dir path, so
#   MLOPS_BIN_DIR="$(hack/build-tools.sh)"
# works.  `source "$cache/bin/env.sh"` exports MLOPS_BIN_DIR & friends.
#
# Cache layout (MLOPS_CACHE_DIR, default ${XDG_CACHE_HOME:-~/.cache}/mlops-operator):
#   bin/kubernetes-<v>/{kube-apiserver,kube-controller-manager,kube-scheduler,kubectl,versions.env}
#   bin/etcd-<v>/etcd
#   bin/kwok-<v>/{kwok,kwok-stages/{node,pod}/...}
#   bin/helm-<v>/helm
#   bin/prometheus-<v>/{promtool,prometheus}
#   bin/argo-rollouts-<v>/{rollouts-controller,argo-rollouts-crds/*.yaml}
#   bin/monitoring-crds-<v>/monitoring.coreos.com_{servicemonitors,podmonitors,prometheusrules}.yaml
#   bin/kueue-<v>/{kueue,kueue-crds/*.yaml,kueue-webhooks.yaml}
#   bin/current/   symlinks to all of the above + versions.env
#   bin/env.sh     exports MLOPS_BIN_DIR, MLOPS_KWOK_STAGES_DIR, ... and PATH
#   build/<tool>-<v>/  generated wrapper modules (go.mod/go.sum), safe to delete
#
# Version overrides (environment): K8S_VERSION, ETCD_VERSION, KWOK_VERSION,
# HELM_VERSION, ARGO_ROLLOUTS_VERSION, PROMETHEUS_VERSION, PROMETHEUS_OPERATOR_VERSION, KUEUE_VERSION.  MLOPS_BUILD_JOBS (go build -p) defaults
# to the number of CPUs.
set -euo pipefail

# ---------------------------------------------------------------- settings ---
K8S_VERSION_CANDIDATES=(v1.35.4 v1.34.4)   # first one that builds wins
if [[ -n "${K8S_VERSION:-}" ]]; then K8S_VERSION_CANDIDATES=("${K8S_VERSION}"); fi
# ETCD_VERSION: default = go.etcd.io/etcd/client/v3 version in k8s.io/kubernetes' go.mod
KWOK_VERSION="${KWOK_VERSION:-v0.7.0}"      # v0.7.0 still has built-in default stages
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
# Prometheus publishes its Go module as v0.3MM.P for release v3.MM.P; no replace directives, so
# `go install pkg@version` works as is (promtool: the alert rules' check and unit tests).
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-v0.316.0}"
# v1.10.2 / v1.9.3 declare `go 1.26.10`; v1.10.1 is the newest that a go1.26.8
# toolchain (GOTOOLCHAIN=local) agrees to download.
ARGO_ROLLOUTS_VERSION="${ARGO_ROLLOUTS_VERSION:-v1.10.1}"
# Only its CRD files are used (nothing is built): the ServiceMonitor, PodMonitor and PrometheusRule
# the chart renders are dry-run against the real schemas.
PROMETHEUS_OPERATOR_VERSION="${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"
# Kueue's go.mod says `go 1.25.0` and has no replace directives: builds with the local go1.26.8.
KUEUE_VERSION="${KUEUE_VERSION:-v0.17.0}"

CACHE_ROOT="${MLOPS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mlops-operator}"
BIN_ROOT="${CACHE_ROOT}/bin"
BUILD_ROOT="${CACHE_ROOT}/build"
CURRENT_DIR="${BIN_ROOT}/current"

MODE=build
FORCE=0
for arg in "$@"; do
  case "${arg}" in
    --print-dir) MODE=print-dir ;;
    --check) MODE=check ;;
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-tools.sh: unknown argument: ${arg}" >&2; exit 2 ;;
  esac
done

# Binaries expected in current/ (entries that must exist for the cache to count as complete).
CURRENT_ENTRIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok helm
                 promtool prometheus rollouts-controller kwok-stages argo-rollouts-crds monitoring-crds
                 kueue kueue-crds kueue-webhooks.yaml versions.env)

log() { printf '[build-tools] %s\n' "$*" >&2; }
die() { printf '[build-tools] ERROR: %s\n' "$*" >&2; exit 1; }

current_complete() {
  local e
  for e in "${CURRENT_ENTRIES[@]}"; do [[ -e "${CURRENT_DIR}/${e}" ]] || return 1; done
}

if [[ "${MODE}" == print-dir ]]; then
  echo "${CURRENT_DIR}"
  current_complete || { log "tools not built yet: run hack/build-tools.sh"; exit 3; }
  exit 0
fi

command -v go >/dev/null || die "go is not on PATH"
mkdir -p "${BIN_ROOT}" "${BUILD_ROOT}"

# One build at a time per cache dir (parallel test workers may all call us).
if command -v flock >/dev/null; then
  exec 9>"${CACHE_ROOT}/.build-tools.lock"
  flock 9
  rm -rf "${BIN_ROOT}"/.tmp-*   # leftovers of interrupted runs (we hold the lock)
fi

# ------------------------------------------------------------- go settings ---
export GOWORK=off
export CGO_ENABLED=0
export GO111MODULE=on
case " ${GOFLAGS:-} " in *" -buildvcs=false "*) ;; *) export GOFLAGS="${GOFLAGS:+${GOFLAGS} }-buildvcs=false" ;; esac
BUILD_JOBS="${MLOPS_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"
# Linking kube-apiserver peaks at a few GiB; -p bounds concurrent compiles+links.
GO_BUILD_FLAGS=(-trimpath -p "${BUILD_JOBS}")
LOCAL_GO_VERSION="$(go env GOVERSION)"; LOCAL_GO_VERSION="${LOCAL_GO_VERSION#go}"

# ----------------------------------------------------------------- helpers ---
now() { date +%s; }
elapsed() { local s=$(( $(now) - $1 )); printf '%dm%02ds' $((s / 60)) $((s % 60)); }

# mod_field <module@version> <Dir|GoMod|Info>: download the module, print a field.
mod_field() {
  local json field="$2"
  json="$(cd "${BUILD_ROOT}" && go mod download -json "$1")" || { printf '%s\n' "${json}" >&2; return 1; }
  sed -n "s/^[[:space:]]*\"${field}\": \"\(.*\)\",\{0,1\}\$/\1/p" <<<"${json}" | head -n1
}

# The `go` line of a go.mod, raised to at least 1.24 (needed for `tool` directives).
go_line() {
  local v
  v="$(sed -n 's/^go \([0-9.]*\).*/\1/p' "$1" | head -n1)"
  [[ -n "${v}" ]] || v=1.24
  printf '%s\n%s\n' "${v}" 1.24 | sort -V | tail -n1
}

# replace directives (single line or block) of a go.mod, copied verbatim except those that point at a
# local directory (they name paths inside the upstream checkout, which a wrapper module does not have).
replace_lines() {
  awk '/^replace \(/{b=1; print; next}
       b{if ($0 ~ /^\)/) {b=0; print; next} if ($0 !~ /=>[[:space:]]*[.]*\//) print; next}
       /^replace / && $0 !~ /=>[[:space:]]*[.]*\//{print}' "$1"
}

# godebug lines (single line or block) of a go.mod, copied verbatim.
godebug_lines() {
  awk '/^godebug \(/{b=1} b{print; if ($0 ~ /^\)/) b=0; next} /^godebug /{print}' "$1"
}

# Version sanity: `go mod download` of a module whose go line is newer than the
# local toolchain fails with a clear error; surface it.
require_go_at_least() {
  local need="$1" what="$2"
  [[ "$(go env GOTOOLCHAIN)" == local* ]] || return 0   # go may fetch a newer toolchain itself
  if [[ "$(printf '%s\n%s\n' "${need}" "${LOCAL_GO_VERSION}" | sort -V | head -n1)" != "${need}" ]]; then
    die "${what} needs go >= ${need}, have ${LOCAL_GO_VERSION}"
  fi
}

# build_wrapper <name> <module> <version> <out> <ldflags> <pkg>...
#   Generates ${BUILD_ROOT}/<name>/go.mod requiring <module>@<version> with the
#   packages as `tool` directives (+ ${EXTRA_GOMOD} appended), tidies it and
#   builds the packages with `go build -o <out>` (<out> ending in "/" = a
#   directory, one binary per package).
EXTRA_GOMOD=""
build_wrapper() {
  local name="$1" module="$2" version="$3" out="$4" ldflags="$5"; shift 5
  local pkgs=("$@") wdir="${BUILD_ROOT}/${name}" gomod golang p
  gomod="$(mod_field "${module}@${version}" GoMod)" || return 1
  [[ -f "${gomod}" ]] || { log "no go.mod for ${module}@${version}"; return 1; }
  golang="$(go_line "${gomod}")"
  require_go_at_least "${golang}" "${module}@${version}"
  rm -rf "${wdir}"; mkdir -p "${wdir}"
  {
    echo "// Generated by hack/build-tools.sh -- do not edit."
    echo "module mlops-operator.local/tools/${name}"
    echo
    echo "go ${golang}"
    echo
    godebug_lines "${gomod}"
    echo
    echo "require ${module} ${version}"
    echo
    for p in "${pkgs[@]}"; do echo "tool ${p}"; done
    echo
    printf '%s\n' "${EXTRA_GOMOD}"
  } >"${wdir}/go.mod"
  log "  ${name}: resolving dependencies (go mod tidy)"
  # Quiet unless it fails: a cold module cache prints a "go: downloading" line per module (hundreds).
  if ! (cd "${wdir}" && go mod tidy >"${wdir}/tidy.log" 2>&1); then
    tail -n 30 "${wdir}/tidy.log" >&2; return 1
  fi
  log "  ${name}: compiling ${pkgs[*]} (-p ${BUILD_JOBS})"
  mkdir -p "$(dirname "${out}x")"
  (cd "${wdir}" && go build "${GO_BUILD_FLAGS[@]}" -ldflags "${ldflags}" -o "${out}" "${pkgs[@]}") || return 1
}

# Run a version command quietly; succeed if it exits 0 and prints <expect>.
version_ok() {
  local expect="$1"; shift
  local out
  out="$("$@" 2>&1)" || return 1
  [[ -z "${expect}" || "${out}" == *"${expect}"* ]]
}

# install_dir <tmpdir> <final dir>: atomically-ish replace the final dir.
install_dir() {
  rm -rf "$2"
  mv "$1" "$2"
}

tmpdir_for() { local d="${BIN_ROOT}/.tmp-$1.$$"; rm -rf "${d}"; mkdir -p "${d}"; echo "${d}"; }
cleanup() { rm -rf "${BIN_ROOT}"/.tmp-*."$$"; }
trap cleanup EXIT

SUMMARY=()
note() { SUMMARY+=("$(printf '%-26s %-14s %s' "$1" "$2" "$3")"); }

# -------------------------------------------------------------- kubernetes ---
K8S_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubectl)

k8s_ok() {
  local dir="${BIN_ROOT}/kubernetes-$1" b
  for b in "${K8S_BINS[@]}"; do
    [[ -x "${dir}/${b}" ]] || return 1
  done
  [[ -f "${dir}/versions.env" ]] || return 1
  version_ok "$1" "${dir}/kube-apiserver" --version || return 1
  version_ok "$1" "${dir}/kube-controller-manager" --version || return 1
  version_ok "$1" "${dir}/kube-scheduler" --version || return 1
  version_ok "$1" "${dir}/kubectl" version --client || return 1
}

build_k8s() {
  local v="$1" t0 gomod kdir tmp minor_patch replaces date ldflags etcd_v
  t0="$(now)"
  log "building kubernetes ${v} (${K8S_BINS[*]}) -- this takes a while"
  gomod="$(mod_field "k8s.io/kubernetes@${v}" GoMod)" || return 1
  # k8s.io/X => ./staging/src/k8s.io/X   becomes   k8s.io/X => k8s.io/X v0.<minor>.<patch>
  minor_patch="${v#v1.}"
  replaces="$(sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._/-]*\) => \./staging/src/k8s\.io/.*#\t\1 => \1 v0.'"${minor_patch}"'#p' "${gomod}")"
  [[ -n "${replaces}" ]] || { log "no staging replaces found in ${gomod}"; return 1; }
  etcd_v="$(sed -n 's#^[[:space:]]*go\.etcd\.io/etcd/client/v3 \(v[0-9][^[:space:]]*\).*#\1#p' "${gomod}" | head -n1)"
  [[ -n "${etcd_v}" ]] || { log "cannot find go.etcd.io/etcd/client/v3 in ${gomod}"; return 1; }
  date="$(sed -n 's/.*"Time": *"\([^"]*\)".*/\1/p' "$(mod_field "k8s.io/kubernetes@${v}" Info)" | head -n1)"
  date="${date%%.*}"; [[ "${date}" == *Z ]] || date="${date}Z"
  local major="${v#v}"; major="${major%%.*}"
  local minor="${minor_patch%%.*}"
  ldflags="-s -w"
  local pkg kv key val
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    for kv in "gitVersion=${v}" "gitMajor=${major}" "gitMinor=${minor}" "gitTreeState=clean" \
              "gitCommit=" "buildDate=${date}"; do
      key="${kv%%=*}"; val="${kv#*=}"
      ldflags+=" -X ${pkg}.${key}=${val}"
    done
  done
  tmp="$(tmpdir_for "kubernetes-${v}")"
  EXTRA_GOMOD="replace (
${replaces}
)"
  local pkgs=() b
  for b in "${K8S_BINS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/${b}"); done
  if ! build_wrapper "kubernetes-${v}" k8s.io/kubernetes "${v}" "${tmp}/" "${ldflags}" "${pkgs[@]}"; then
    EXTRA_GOMOD=""; return 1
  fi
  EXTRA_GOMOD=""
  printf 'K8S_VERSION=%s\nETCD_VERSION=%s\n' "${v}" "${etcd_v}" >"${tmp}/versions.env"
  kdir="${BIN_ROOT}/kubernetes-${v}"
  install_dir "${tmp}" "${kdir}"
  k8s_ok "${v}" || { log "kubernetes ${v} binaries fail their --version check"; return 1; }
  log "built kubernetes ${v} in $(elapsed "${t0}")"
  note "kubernetes" "${v}" "built in $(elapsed "${t0}")"
}

K8S_VERSION=""
if [[ "${FORCE}" == 0 ]]; then
  for v in "${K8S_VERSION_CANDIDATES[@]}"; do
    if k8s_ok "${v}"; then K8S_VERSION="${v}"; note kubernetes "${v}" cached; break; fi
  done
fi
if [[ -z "${K8S_VERSION}" ]]; then
  [[ "${MODE}" == check ]] && die "kubernetes (${K8S_VERSION_CANDIDATES[*]}) not built"
  for v in "${K8S_VERSION_CANDIDATES[@]}"; do
    if build_k8s "${v}"; then K8S_VERSION="${v}"; break; fi
    log "kubernetes ${v} failed to build; trying the next candidate"
  done
  [[ -n "${K8S_VERSION}" ]] || die "could not build any of: ${K8S_VERSION_CANDIDATES[*]}"
fi
K8S_DIR="${BIN_ROOT}/kubernetes-${K8S_VERSION}"
# shellcheck disable=SC1091
ETCD_VERSION="${ETCD_VERSION:-$(sed -n 's/^ETCD_VERSION=//p' "${K8S_DIR}/versions.env")}"

# -------------------------------------------------------------------- etcd ---
ETCD_DIR="${BIN_ROOT}/etcd-${ETCD_VERSION}"
etcd_ok() { [[ -x "${ETCD_DIR}/etcd" ]] && version_ok "etcd Version: ${ETCD_VERSION#v}" "${ETCD_DIR}/etcd" --version; }
if [[ "${FORCE}" == 0 ]] && etcd_ok; then
  note etcd "${ETCD_VERSION}" cached
else
  [[ "${MODE}" == check ]] && die "etcd ${ETCD_VERSION} not built"
  t0="$(now)"; log "building etcd ${ETCD_VERSION}"
  tmp="$(tmpdir_for "etcd-${ETCD_VERSION}")"
  # Upstream's replaces only point its sibling modules (api, client/*, pkg) at
  # the checkout; server/v3@vX requires them at vX already, so none are needed.
  # The main package is the module root (go.etcd.io/etcd/server/v3): name the binary explicitly.
  build_wrapper "etcd-${ETCD_VERSION}" go.etcd.io/etcd/server/v3 "${ETCD_VERSION}" "${tmp}/etcd" \
    "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_VERSION}" go.etcd.io/etcd/server/v3 \
    || die "etcd build failed"
  install_dir "${tmp}" "${ETCD_DIR}"
  etcd_ok || die "etcd ${ETCD_VERSION} fails its --version check"
  log "built etcd ${ETCD_VERSION} in $(elapsed "${t0}")"
  note etcd "${ETCD_VERSION}" "built in $(elapsed "${t0}")"
fi

# -------------------------------------------------------------------- kwok ---
KWOK_DIR="${BIN_ROOT}/kwok-${KWOK_VERSION}"
kwok_ok() {
  [[ -x "${KWOK_DIR}/kwok" && -d "${KWOK_DIR}/kwok-stages/pod" && -d "${KWOK_DIR}/kwok-stages/node" ]] \
    && version_ok "${KWOK_VERSION#v}" "${KWOK_DIR}/kwok" --version
}
if [[ "${FORCE}" == 0 ]] && kwok_ok; then
  note kwok "${KWOK_VERSION}" cached
else
  [[ "${MODE}" == check ]] && die "kwok ${KWOK_VERSION} not built"
  t0="$(now)"; log "building kwok ${KWOK_VERSION}"
  tmp="$(tmpdir_for "kwok-${KWOK_VERSION}")"
  build_wrapper "kwok-${KWOK_VERSION}" sigs.k8s.io/kwok "${KWOK_VERSION}" "${tmp}/" "-s -w" \
    sigs.k8s.io/kwok/cmd/kwok || die "kwok build failed"
  # Stage YAMLs (node/*, pod/*; no testdata, kustomization or Go files) so the
  # caller can pass them explicitly: kwok --config <file> [--config <file>...].
  src="$(mod_field "sigs.k8s.io/kwok@${KWOK_VERSION}" Dir)/kustomize/stage"
  for group in node pod; do
    (cd "${src}" && find "${group}" -type f -name '*.yaml' ! -path '*/testdata/*' ! -name 'kustomization.yaml') |
      while IFS= read -r f; do install -D -m 0644 "${src}/${f}" "${tmp}/kwok-stages/${f}"; done
  done
  install_dir "${tmp}" "${KWOK_DIR}"
  kwok_ok || die "kwok ${KWOK_VERSION} fails its --version check"
  log "built kwok ${KWOK_VERSION} in $(elapsed "${t0}")"
  note kwok "${KWOK_VERSION}" "built in $(elapsed "${t0}")"
fi

# -------------------------------------------------------------------- helm ---
HELM_DIR="${BIN_ROOT}/helm-${HELM_VERSION}"
helm_ok() { [[ -x "${HELM_DIR}/helm" ]] && version_ok "${HELM_VERSION}" "${HELM_DIR}/helm" version --short; }
if [[ "${FORCE}" == 0 ]] && helm_ok; then
  note helm "${HELM_VERSION}" cached
else
  [[ "${MODE}" == check ]] && die "helm ${HELM_VERSION} not built"
  t0="$(now)"; log "building helm ${HELM_VERSION}"
  # Same ldflags as helm's Makefile: version + the k8s version used for
  # .Capabilities.KubeVersion / lint (client-go v0.M.m => 1+0.M).
  helm_gomod="$(mod_field "helm.sh/helm/v3@${HELM_VERSION}" GoMod)"
  cg="$(sed -n 's#^[[:space:]]*k8s\.io/client-go v0\.\([0-9]*\)\..*#\1#p' "${helm_gomod}" | head -n1)"
  hl="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  if [[ -n "${cg}" ]]; then
    for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
      hl+=" -X ${p}.k8sVersionMajor=1 -X ${p}.k8sVersionMinor=${cg}"
    done
  fi
  tmp="$(tmpdir_for "helm-${HELM_VERSION}")"
  build_wrapper "helm-${HELM_VERSION}" helm.sh/helm/v3 "${HELM_VERSION}" "${tmp}/" "${hl}" \
    helm.sh/helm/v3/cmd/helm || die "helm build failed"
  install_dir "${tmp}" "${HELM_DIR}"
  helm_ok || die "helm ${HELM_VERSION} fails its version check"
  log "built helm ${HELM_VERSION} in $(elapsed "${t0}")"
  note helm "${HELM_VERSION}" "built in $(elapsed "${t0}")"
fi

# -------------------------------------------------------------- prometheus ---
# promtool and prometheus, with plain `go install module/cmd/x@version` (the module has no replace
# directives), into a temp GOBIN, then moved into the cache like the others.
PROM_DIR="${BIN_ROOT}/prometheus-${PROMETHEUS_VERSION}"
PROM_RELEASE="${PROMETHEUS_VERSION#v0.}"                       # 316.0
PROM_RELEASE="3.$(( ${PROM_RELEASE%%.*} - 300 )).${PROM_RELEASE#*.}"  # 3.16.0
prom_ok() {
  [[ -x "${PROM_DIR}/promtool" && -x "${PROM_DIR}/prometheus" ]] \
    && version_ok "${PROM_RELEASE}" "${PROM_DIR}/promtool" --version \
    && version_ok "${PROM_RELEASE}" "${PROM_DIR}/prometheus" --version
}
if [[ "${FORCE}" == 0 ]] && prom_ok; then
  note prometheus "${PROMETHEUS_VERSION}" cached
else
  [[ "${MODE}" == check ]] && die "prometheus/promtool ${PROMETHEUS_VERSION} not built"
  t0="$(now)"; log "building promtool and prometheus ${PROMETHEUS_VERSION} (go install) -- this takes a while"
  tmp="$(tmpdir_for "prometheus-${PROMETHEUS_VERSION}")"
  pv="github.com/prometheus/common/version"
  (cd "${BUILD_ROOT}" && GOBIN="${tmp}" go install "${GO_BUILD_FLAGS[@]}" \
    -ldflags "-s -w -X ${pv}.Version=${PROM_RELEASE} -X ${pv}.Revision=module-${PROMETHEUS_VERSION} -X ${pv}.Branch=HEAD" \
    "github.com/prometheus/prometheus/cmd/promtool@${PROMETHEUS_VERSION}" \
    "github.com/prometheus/prometheus/cmd/prometheus@${PROMETHEUS_VERSION}") || die "prometheus build failed"
  install_dir "${tmp}" "${PROM_DIR}"
  prom_ok || die "promtool/prometheus ${PROMETHEUS_VERSION} fail their --version check"
  log "built promtool and prometheus ${PROMETHEUS_VERSION} in $(elapsed "${t0}")"
  note prometheus "${PROMETHEUS_VERSION}" "built in $(elapsed "${t0}")"
fi

# ---------------------------------------------------------- argo rollouts ---
# rollouts-controller (cmd/rollouts-controller; the controller needs no UI assets) and the CRDs from
# the same module.  The wrapper copies upstream's replace block: without it `go mod tidy` fails on the
# k8s.io/kubelet@v0.0.0 its dependencies require.
# About 6-7 min on 2 cores from cold caches (6m52s with module downloads, 5m55s compiling alone).
ARGO_DIR="${BIN_ROOT}/argo-rollouts-${ARGO_ROLLOUTS_VERSION}"
argo_ok() {
  [[ -x "${ARGO_DIR}/rollouts-controller" && -f "${ARGO_DIR}/argo-rollouts-crds/rollout-crd.yaml" ]] \
    && version_ok "${ARGO_ROLLOUTS_VERSION}" "${ARGO_DIR}/rollouts-controller" --version
}
if [[ "${FORCE}" == 0 ]] && argo_ok; then
  note argo-rollouts "${ARGO_ROLLOUTS_VERSION}" cached
else
  [[ "${MODE}" == check ]] && die "argo-rollouts ${ARGO_ROLLOUTS_VERSION} (rollouts-controller, CRDs) not built"
  t0="$(now)"; log "building argo-rollouts ${ARGO_ROLLOUTS_VERSION} (rollouts-controller) and extracting its CRDs"
  src="$(mod_field "github.com/argoproj/argo-rollouts@${ARGO_ROLLOUTS_VERSION}" Dir)" \
    || die "cannot download github.com/argoproj/argo-rollouts@${ARGO_ROLLOUTS_VERSION}"
  argo_gomod="$(mod_field "github.com/argoproj/argo-rollouts@${ARGO_ROLLOUTS_VERSION}" GoMod)"
  tmp="$(tmpdir_for "argo-rollouts-${ARGO_ROLLOUTS_VERSION}")"
  EXTRA_GOMOD="$(replace_lines "${argo_gomod}")"
  # utils/version.version is the release without its leading "v" (the binary prints v<version>+unknown).
  build_wrapper "argo-rollouts-${ARGO_ROLLOUTS_VERSION}" github.com/argoproj/argo-rollouts \
    "${ARGO_ROLLOUTS_VERSION}" "${tmp}/rollouts-controller" \
    "-s -w -X github.com/argoproj/argo-rollouts/utils/version.version=${ARGO_ROLLOUTS_VERSION#v}" \
    github.com/argoproj/argo-rollouts/cmd/rollouts-controller || { EXTRA_GOMOD=""; die "rollouts-controller build failed"; }
  EXTRA_GOMOD=""
  mkdir -p "${tmp}/argo-rollouts-crds"
  for f in "${src}"/manifests/crds/*.yaml; do
    [[ "$(basename "${f}")" == kustomization.yaml ]] && continue
    install -m 0644 "${f}" "${tmp}/argo-rollouts-crds/"
  done
  install_dir "${tmp}" "${ARGO_DIR}"
  argo_ok || die "argo-rollouts ${ARGO_ROLLOUTS_VERSION}: rollouts-controller fails its --version check or CRDs missing"
  log "built argo-rollouts ${ARGO_ROLLOUTS_VERSION} in $(elapsed "${t0}")"
  note argo-rollouts "${ARGO_ROLLOUTS_VERSION}" "built in $(elapsed "${t0}")"
fi

# ------------------------------------------------- prometheus-operator CRDs ---
MONITORING_DIR="${BIN_ROOT}/monitoring-crds-${PROMETHEUS_OPERATOR_VERSION}"
MONITORING_CRDS=(servicemonitors podmonitors prometheusrules)
monitoring_ok() {
  local c
  for c in "${MONITORING_CRDS[@]}"; do [[ -s "${MONITORING_DIR}/monitoring.coreos.com_${c}.yaml" ]] || return 1; done
}
if [[ "${FORCE}" == 0 ]] && monitoring_ok; then
  note monitoring-crds "${PROMETHEUS_OPERATOR_VERSION}" cached
else
  [[ "${MODE}" == check ]] && die "monitoring.coreos.com CRDs ${PROMETHEUS_OPERATOR_VERSION} not extracted"
  t0="$(now)"; log "extracting the monitoring.coreos.com CRDs of prometheus-operator ${PROMETHEUS_OPERATOR_VERSION}"
  src="$(mod_field "github.com/prometheus-operator/prometheus-operator@${PROMETHEUS_OPERATOR_VERSION}" Dir)" \
    || die "cannot download github.com/prometheus-operator/prometheus-operator@${PROMETHEUS_OPERATOR_VERSION}"
  tmp="$(tmpdir_for "monitoring-crds-${PROMETHEUS_OPERATOR_VERSION}")"
  for c in "${MONITORING_CRDS[@]}"; do
    install -m 0644 "${src}/example/prometheus-operator-crd/monitoring.coreos.com_${c}.yaml" "${tmp}/" \
      || die "prometheus-operator ${PROMETHEUS_OPERATOR_VERSION} has no ${c} CRD"
  done
  install_dir "${tmp}" "${MONITORING_DIR}"
  monitoring_ok || die "monitoring.coreos.com CRDs missing after extraction"
  note monitoring-crds "${PROMETHEUS_OPERATOR_VERSION}" "extracted in $(elapsed "${t0}")"
fi

# ------------------------------------------------------------------- kueue ---
# The kueue manager (cmd/kueue) plus its CRDs (config/components/crd/bases) and webhook manifests
# (config/components/webhook/manifests.yaml; the control plane rewrites their clientConfig to a
# loopback URL).  The binary has no --version flag: its build info (`go version -m`) names the module
# version, and pkg/version.GitVersion (logged at start) is set by ldflags as upstream's Makefile does.
# 2m46s on 2 shared cores with go1.26.8 (110 dependency modules downloaded by the tidy; ~87 MB stripped).
KUEUE_DIR="${BIN_ROOT}/kueue-${KUEUE_VERSION}"
kueue_ok() {
  [[ -x "${KUEUE_DIR}/kueue" && -f "${KUEUE_DIR}/kueue-crds/kueue.x-k8s.io_workloads.yaml" \
     && -f "${KUEUE_DIR}/kueue-webhooks.yaml" ]] \
    && version_ok "sigs.k8s.io/kueue"$'\t'"${KUEUE_VERSION}" go version -m "${KUEUE_DIR}/kueue"
}
if [[ "${FORCE}" == 0 ]] && kueue_ok; then
  note kueue "${KUEUE_VERSION}" cached
else
  [[ "${MODE}" == check ]] && die "kueue ${KUEUE_VERSION} (manager, CRDs, webhooks) not built"
  t0="$(now)"; log "building kueue ${KUEUE_VERSION} (cmd/kueue) and extracting its CRDs and webhook manifests"
  src="$(mod_field "sigs.k8s.io/kueue@${KUEUE_VERSION}" Dir)" || die "cannot download sigs.k8s.io/kueue@${KUEUE_VERSION}"
  kueue_gomod="$(mod_field "sigs.k8s.io/kueue@${KUEUE_VERSION}" GoMod)"
  tmp="$(tmpdir_for "kueue-${KUEUE_VERSION}")"
  EXTRA_GOMOD="$(replace_lines "${kueue_gomod}")"
  kv="sigs.k8s.io/kueue/pkg/version"
  build_wrapper "kueue-${KUEUE_VERSION}" sigs.k8s.io/kueue "${KUEUE_VERSION}" "${tmp}/kueue" \
    "-s -w -X ${kv}.GitVersion=${KUEUE_VERSION} -X ${kv}.GitCommit=module-${KUEUE_VERSION}" \
    sigs.k8s.io/kueue/cmd/kueue || { EXTRA_GOMOD=""; die "kueue build failed"; }
  EXTRA_GOMOD=""
  mkdir -p "${tmp}/kueue-crds"
  for f in "${src}"/config/components/crd/bases/*.yaml; do install -m 0644 "${f}" "${tmp}/kueue-crds/"; done
  install -m 0644 "${src}/config/components/webhook/manifests.yaml" "${tmp}/kueue-webhooks.yaml"
  install_dir "${tmp}" "${KUEUE_DIR}"
  kueue_ok || die "kueue ${KUEUE_VERSION}: binary's build info is not sigs.k8s.io/kueue ${KUEUE_VERSION}, or CRDs/webhooks missing"
  log "built kueue ${KUEUE_VERSION} in $(elapsed "${t0}")"
  note kueue "${KUEUE_VERSION}" "built in $(elapsed "${t0}")"
fi

# ----------------------------------------------------------------- current ---
mkdir -p "${CURRENT_DIR}"
link() { ln -sfn "$1" "${CURRENT_DIR}/$2"; }
for b in "${K8S_BINS[@]}"; do link "../kubernetes-${K8S_VERSION}/${b}" "${b}"; done
link "../etcd-${ETCD_VERSION}/etcd" etcd
link "../kwok-${KWOK_VERSION}/kwok" kwok
link "../kwok-${KWOK_VERSION}/kwok-stages" kwok-stages
link "../helm-${HELM_VERSION}/helm" helm
link "../prometheus-${PROMETHEUS_VERSION}/promtool" promtool
link "../prometheus-${PROMETHEUS_VERSION}/prometheus" prometheus
link "../argo-rollouts-${ARGO_ROLLOUTS_VERSION}/argo-rollouts-crds" argo-rollouts-crds
link "../argo-rollouts-${ARGO_ROLLOUTS_VERSION}/rollouts-controller" rollouts-controller
link "../monitoring-crds-${PROMETHEUS_OPERATOR_VERSION}" monitoring-crds
link "../kueue-${KUEUE_VERSION}/kueue" kueue
link "../kueue-${KUEUE_VERSION}/kueue-crds" kueue-crds
link "../kueue-${KUEUE_VERSION}/kueue-webhooks.yaml" kueue-webhooks.yaml

versions="K8S_VERSION=${K8S_VERSION}
ETCD_VERSION=${ETCD_VERSION}
KWOK_VERSION=${KWOK_VERSION}
HELM_VERSION=${HELM_VERSION}
PROMETHEUS_VERSION=${PROMETHEUS_VERSION}
ARGO_ROLLOUTS_VERSION=${ARGO_ROLLOUTS_VERSION}
PROMETHEUS_OPERATOR_VERSION=${PROMETHEUS_OPERATOR_VERSION}
KUEUE_VERSION=${KUEUE_VERSION}"
if [[ "$(cat "${CURRENT_DIR}/versions.env" 2>/dev/null)" != "${versions}" ]]; then
  printf '%s\n' "${versions}" >"${CURRENT_DIR}/versions.env.tmp"
  mv -f "${CURRENT_DIR}/versions.env.tmp" "${CURRENT_DIR}/versions.env"
fi
envsh="# Generated by hack/build-tools.sh -- source me.
export MLOPS_BIN_DIR='${CURRENT_DIR}'
export MLOPS_KWOK_STAGES_DIR='${CURRENT_DIR}/kwok-stages'
export MLOPS_ARGO_ROLLOUTS_CRDS_DIR='${CURRENT_DIR}/argo-rollouts-crds'
export MLOPS_KUEUE_CRDS_DIR='${CURRENT_DIR}/kueue-crds'
export MLOPS_KUEUE_WEBHOOKS='${CURRENT_DIR}/kueue-webhooks.yaml'
$(sed 's/^/export MLOPS_/' <<<"${versions}")
case \":\${PATH}:\" in *':${CURRENT_DIR}:'*) ;; *) export PATH='${CURRENT_DIR}':\"\${PATH}\" ;; esac"
if [[ "$(cat "${BIN_ROOT}/env.sh" 2>/dev/null)" != "${envsh}" ]]; then
  printf '%s\n' "${envsh}" >"${BIN_ROOT}/env.sh.tmp"
  mv -f "${BIN_ROOT}/env.sh.tmp" "${BIN_ROOT}/env.sh"
fi

for line in "${SUMMARY[@]}"; do log "${line}"; done
log "bin dir: ${CURRENT_DIR}  (source ${BIN_ROOT}/env.sh)"
echo "${CURRENT_DIR}"
