#!/usr/bin/env bash
# Make the tritonserver bundled in the nvidia-pytriton wheel of a venv (default .venv-triton) runnable
# on this machine, then check that it starts. Idempotent: run it as often as you like.
#
# The wheel ships the python backend's stub once per Python version under
# pytriton/tritonserver/python_backend_stubs/<X.Y>/; tritonserver looks for it next to the backend's
# library (backends/python/), where pytriton itself copies it at run time. We copy the one matching
# the venv's Python there once, so a plain `tritonserver --backend-directory=...` works.
#
# Usage: hack/triton-setup.sh [VENV]   (prints the tritonserver path on stdout)
set -euo pipefail

venv=${1:-.venv-triton}
python="$venv/bin/python"
if [[ ! -x "$python" ]]; then
  echo "triton-setup: $python is missing (make triton creates it)" >&2
  exit 1
fi

read -r pytriton pyversion libdir < <(
  "$python" -c 'import pathlib, sys, sysconfig, pytriton
print(pathlib.Path(pytriton.__file__).parent, f"{sys.version_info[0]}.{sys.version_info[1]}",
      sysconfig.get_config_var("LIBDIR"))'
)
server="$pytriton/tritonserver"
stub="$server/python_backend_stubs/$pyversion/triton_python_backend_stub"
target="$server/backends/python/triton_python_backend_stub"
if [[ ! -f "$stub" ]]; then
  echo "triton-setup: no python backend stub for Python $pyversion in $server/python_backend_stubs" >&2
  exit 1
fi
if ! cmp -s "$stub" "$target"; then
  install -m 0755 "$stub" "$target"
  echo "triton-setup: installed the Python $pyversion backend stub into $server/backends/python" >&2
fi

# The binary and the stub link against libpython of the venv's interpreter (LIBDIR); a missing
# library shows here, at install time, rather than as a model that fails to load in a test.
missing=$(LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  ldd "$server/bin/tritonserver" "$target" | grep 'not found' || true)
if [[ -n "$missing" ]]; then
  echo "triton-setup: unresolved libraries:" >&2
  echo "$missing" >&2
  exit 1
fi
echo "$server/bin/tritonserver"
