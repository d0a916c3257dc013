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
  # --run-pods: pods of our own images (the MTA) really run, bound to their pod IPs.
  kubeconfig=$($cli testenv up --state-dir "$state" --run-pods)
  export KUBECONFIG=$kubeconfig
  kubectl="$(testenv/build-controlplane.sh)/kubectl"  # built already: prints where the binaries are
  "$kubectl" apply --server-side --force-conflicts -f crds/ >/dev/null
  "$kubectl" wait --for=condition=Established --timeout=60s crd -l app.kubernetes.io/part-of=smtp-infra >/dev/null
  if [ -f "$state/operator.pid" ] && kill -0 "$(cat "$state/operator.pid")" 2>/dev/null; then
    echo "operator already running (pid $(cat "$state/operator.pid"))" >&2
  else
    nohup $cli operator run --kubeconfig "$kubeconfig" >"$state/operator.log" 2>&1 &
    echo $! >"$state/operator.pid"
    echo "operator started (pid $!, log $state/operator.log)" >&2
  fi
  # The example SmtpServer terminates TLS with this Secret; a self-signed certificate will do here.
  if ! "$kubectl" get secret smtp-mail-example-com-tls >/dev/null 2>&1; then
    .venv/bin/python - "$state" <<'PY'
import datetime, sys
from pathlib import Path
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smtp.mail.example.com")])
now = datetime.datetime.now(datetime.UTC)
cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("smtp.mail.example.com")]), critical=False)
        .sign(key, hashes.SHA256()))
d = Path(sys.argv[1])
(d / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
(d / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
PY
    "$kubectl" create secret tls smtp-mail-example-com-tls --cert="$state/tls.crt" --key="$state/tls.key" >/dev/null
  fi
  "$kubectl" apply -f examples/ >/dev/null
  "$kubectl" wait --for=condition=Ready --timeout=60s warmupplan --all >/dev/null
  "$kubectl" wait --for=condition=Ready --timeout=60s tenant --all >/dev/null
  "$kubectl" wait --for=condition=Ready --timeout=60s ippool --all >/dev/null
  "$kubectl" wait --for=condition=Ready --timeout=120s smtpserver/outbound >/dev/null
  echo
  "$kubectl" get pods -o wide -l app.kubernetes.io/instance=outbound
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
