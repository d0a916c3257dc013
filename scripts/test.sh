#!/usr/bin/env bash
# Everything CI runs, with all set-up: the control-plane build starts first in the background
# (it is the long pole on a fresh machine), Debian packages and the virtualenv install
# meanwhile, then lint and the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export SMTP_INFRA_CACHE=${SMTP_INFRA_CACHE:-$HOME/.cache/smtp-infra}
mkdir -p "$SMTP_INFRA_CACHE"
start=$(date +%s)

build_log="$SMTP_INFRA_CACHE/controlplane-build.log"
testenv/build-controlplane.sh >"$build_log" 2>&1 &
build_pid=$!

scripts/install-system-deps.sh
make --no-print-directory venv
make --no-print-directory lint

if ! wait "$build_pid"; then
  echo "control-plane build failed:" >&2
  tail -50 "$build_log" >&2
  exit 1
fi
echo "[test] set-up done in $(( $(date +%s) - start ))s" >&2

.venv/bin/pytest "$@"
echo "[test] total $(( $(date +%s) - start ))s" >&2
