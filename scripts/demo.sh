#!/usr/bin/env bash
# The local demo: a real control plane (built from Go modules), the CRDs, the operator, the
# examples, then `kubectl get smtpinfra`. Everything stays running until `scripts/demo.sh down`.
set -euo pipefail
cd "$(dirname "$0")/.."
export SMTP_INFRA_CACHE=${SMTP_INFRA_CACHE:-$HOME/.cache/smtp-infra}
state=${SMTP_INFRA_DEMO_STATE:-$PWD/.state/demo}
cli=.venv/bin/smtp-infra
mkdir -p "$state"

case "${1:-up}" in
up)
  kubeconfig=$($cli testenv up --state-dir "$state")
  export KUBECONFIG=$kubeconfig
  kubectl="$SMTP_INFRA_CACHE/controlplane-v1.36.3/bin/kubectl"
  "$kubectl" apply --server-side --force-conflicts -f crds/ >/dev/null
  "$kubectl" wait --for=condition=Established --timeout=60s crd -l app.kubernetes.io/part-of=smtp-infra >/dev/null
  if [ -f "$state/operator.pid" ] && kill -0 "$(cat "$state/operator.pid")" 2>/dev/null; then
    echo "operator already running (pid $(cat "$state/operator.pid"))" >&2
  else
    nohup $cli operator run --kubeconfig "$kubeconfig" >"$state/operator.log" 2>&1 &
    echo $! >"$state/operator.pid"
    echo "operator started (pid $!, log $state/operator.log)" >&2
  fi
  "$kubectl" apply -f examples/ >/dev/null
  "$kubectl" wait --for=condition=Ready --timeout=60s warmupplan --all >/dev/null
  # The other kinds are reconciled to Ready=Unknown (Pending) for now; wait until they say so.
  for _ in $(seq 1 100); do
    n=$("$kubectl" get smtpinfra -A -o jsonpath='{range .items[*]}{.status.observedGeneration}{"\n"}{end}' | grep -c . || true)
    total=$("$kubectl" get smtpinfra -A --no-headers | wc -l)
    [ "$n" -eq "$total" ] && break
    sleep 0.2
  done
  echo
  "$kubectl" get smtpinfra -A
  echo
  echo "KUBECONFIG=$kubeconfig   (stop with: make demo-down)"
  ;;
down)
  if [ -f "$state/operator.pid" ]; then
    kill "$(cat "$state/operator.pid")" 2>/dev/null || true
    rm -f "$state/operator.pid"
  fi
  $cli testenv down --state-dir "$state"
  ;;
*)
  echo "usage: $0 up|down" >&2; exit 2;;
esac
