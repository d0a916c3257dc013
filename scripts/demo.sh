#!/usr/bin/env bash
# The local demo, installed the way users install: a real control plane (built from Go modules),
# the CRDs, the operator with the Helm chart (`helm upgrade --install`; its pod is run from this
# checkout by the local pod runner), a DNS server and an SMTP sink standing in for the Internet,
# the examples/ (Campaign included), mail delivered to the sink, then `smtp-infra report`.
# Everything stays running until `scripts/demo.sh down`. Running `up` again brings back whatever
# died (control plane, pod runner, the operator's and MTAs' pods, DNS, sink) and changes nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
export SMTP_INFRA_CACHE=${SMTP_INFRA_CACHE:-$HOME/.cache/smtp-infra}
state=${SMTP_INFRA_DEMO_STATE:-$PWD/.state/demo}
cli=$PWD/.venv/bin/smtp-infra
py=$PWD/.venv/bin/python
# Stand-ins for the Internet, on loopback: a DNS server with the recipients' MX records and the
# sink those records point to (smtp-sink, every message appended to $state/sink/messages: its one-file-
# per-message dump (-d) gave two messages arriving together the same file name, and one was lost).
dns_addr=${SMTP_INFRA_DEMO_DNS:-127.0.30.53}
dns_port=10053
sink_addr=${SMTP_INFRA_DEMO_SINK:-127.0.30.25}
sink_port=2525
release=smtp-infra
operator_ns=smtp-infra-system
mkdir -p "$state"
started=$(date +%s)

step() { printf '\n==> %s\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_dns() {
  local d=$state/dns
  mkdir -p "$d/db"
  if alive "$d/knotd.pid"; then note "DNS server already running (pid $(cat "$d/knotd.pid"))"; return; fi
  cat >"$d/knot.conf" <<EOF
server:
    listen: $dns_addr@$dns_port
    rundir: $d
database:
    storage: $d/db
log:
  - target: stderr
    any: warning
template:
  - id: default
    storage: $d
    file: "%s.zone"
zone:
  - domain: example.net
  - domain: example.org
EOF
  for zone in example.net example.org; do
    printf '%s\n' '$TTL 60' "@ SOA ns.$zone. hostmaster.$zone. 1 60 60 600 5" "@ NS ns.$zone." \
      "ns A $dns_addr" "@ MX 10 mx.$zone." "mx A $sink_addr" >"$d/$zone.zone"
  done
  nohup knotd -c "$d/knot.conf" >"$d/knotd.log" 2>&1 &
  echo $! >"$d/knotd.pid"
  note "DNS server started: MX of example.net and example.org -> $sink_addr (knotd, pid $!, $dns_addr:$dns_port)"
}

start_sink() {
  local d=$state/sink
  mkdir -p "$d"
  if alive "$d/sink.pid"; then note "SMTP sink already running (pid $(cat "$d/sink.pid"))"; return; fi
  nohup /usr/sbin/smtp-sink -u root -c -D "$d/messages" "$sink_addr:$sink_port" 100 >"$d/counters" 2>/dev/null &
  echo $! >"$d/sink.pid"
  note "SMTP sink started: smtp-sink on $sink_addr:$sink_port, every message appended to $d/messages"
}

# Each message in the dump starts with smtp-sink's own X-Client-Addr record.
delivered() { local n; n=$(grep -c '^X-Client-Addr: ' "$state/sink/messages" 2>/dev/null) || true; echo "${n:-0}"; }

stop_pidfile() {
  if [ -f "$1" ]; then kill "$(cat "$1")" 2>/dev/null || true; rm -f "$1"; fi
}

# The examples as applied here: the SmtpServer resolves MX records with the demo's DNS server and
# delivers to port $sink_port (spec.delivery, for test environments); everything else as written.
examples() {
  "$py" - "$dns_addr" "$dns_port" "$sink_port" <<'PY'
import sys
from pathlib import Path
import yaml
dns, port, remote = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
docs = [d for p in sorted(Path("examples").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
for d in docs:
    if d["kind"] == "SmtpServer":
        d["spec"]["delivery"] = {"resolver": {"address": dns, "port": port}, "remotePort": remote}
print(yaml.safe_dump_all(docs, sort_keys=False))
PY
}

case "${1:-up}" in
up)
  step "Control plane (with the local pod runner for our own images)"
  # --run-pods: pods of our own images (the operator, the MTA, campaign Jobs) really run, bound to their pod IPs.
  kubeconfig=$($cli testenv up --state-dir "$state" --run-pods)
  export KUBECONFIG=$kubeconfig
  bin="$(testenv/build-controlplane.sh)"  # built already by `make demo`: prints where the binaries are
  kubectl="$bin/kubectl"
  helm() { HELM_CACHE_HOME=$state/helm/cache HELM_CONFIG_HOME=$state/helm/config HELM_DATA_HOME=$state/helm/data \
           "$bin/helm" "$@"; }
  note "KUBECONFIG=$kubeconfig"

  step "CRDs"
  "$kubectl" apply --server-side --force-conflicts -f crds/ >/dev/null
  "$kubectl" wait --for=condition=Established --timeout=60s crd -l app.kubernetes.io/part-of=smtp-infra >/dev/null
  note "$(ls crds/*.yaml | wc -l) CRDs established"

  step "Operator, with the chart: helm upgrade --install $release charts/smtp-infra -n $operator_ns"
  # An operator process from demos before the chart was used: the chart's pod replaces it.
  stop_pidfile "$state/operator.pid"
  helm upgrade --install "$release" charts/smtp-infra --namespace "$operator_ns" --create-namespace \
    --set resyncSeconds=10 >/dev/null
  if ! "$kubectl" -n "$operator_ns" rollout status deployment/"$release"-operator --timeout=180s >/dev/null; then
    echo "the operator did not become Available; its log: $state/pod-runner/logs/$operator_ns/*/operator.log" >&2
    exit 1
  fi
  operator_pod=$("$kubectl" -n "$operator_ns" get pods -l app.kubernetes.io/instance="$release" \
                 -o jsonpath='{.items[0].metadata.name}')
  operator_ip=$("$kubectl" -n "$operator_ns" get pod "$operator_pod" -o jsonpath='{.status.podIP}')
  note "operator pod $operator_pod Ready at $operator_ip (helm status $release -n $operator_ns)"

  step "The Internet's stand-ins: DNS and an SMTP sink"
  start_dns
  start_sink

  step "Examples (examples/*.yaml)"
  # The example SmtpServer terminates TLS with this Secret; a self-signed certificate will do here.
  if ! "$kubectl" get secret smtp-mail-example-com-tls >/dev/null 2>&1; then
    "$py" - "$state" <<'PY'
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
        # The campaign sender Job connects through the submission Service and verifies this name.
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("smtp.mail.example.com")]), critical=False)
        .sign(key, hashes.SHA256()))
d = Path(sys.argv[1])
(d / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
(d / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
PY
    "$kubectl" create secret tls smtp-mail-example-com-tls --cert="$state/tls.crt" --key="$state/tls.key" >/dev/null
  fi
  # Counted before the examples go in: the example Campaign starts sending as soon as its server is
  # Ready, often before the steps below look (counted after, the demo waited for two more forever).
  before=$(delivered)
  examples | "$kubectl" apply -f - >/dev/null
  "$kubectl" wait --for=condition=Ready --timeout=60s warmupplan --all >/dev/null
  "$kubectl" wait --for=condition=Ready --timeout=60s tenant --all >/dev/null
  "$kubectl" wait --for=condition=Ready --timeout=60s ippool --all >/dev/null
  "$kubectl" wait --for=condition=Ready --timeout=180s smtpserver/outbound >/dev/null
  note "WarmupPlans, Tenant, IpPool and SmtpServer Ready"
  "$kubectl" get pods -o wide -l app.kubernetes.io/instance=outbound >&2

  step "Mail: the Campaign tenant-acme/november-newsletter"
  if [ "$("$kubectl" -n tenant-acme get campaign november-newsletter -o jsonpath='{.status.phase}')" = Completed ]; then
    note "The Campaign completed in an earlier run (its messages are in the sink already)"
    want=$before
    what="the campaign's messages in the sink"
  else
    note "Waiting for the Campaign's phase Completed (its sender Job submits every recipient; the"
    note "Campaign completes from the MTAs' final outcomes) ..."
    if ! "$kubectl" -n tenant-acme wait --for=jsonpath='{.status.phase}'=Completed --timeout=300s \
         campaign/november-newsletter >/dev/null; then
      echo "the Campaign did not complete within 5 minutes:" >&2
      "$kubectl" -n tenant-acme get campaign november-newsletter -o yaml >&2
      exit 1
    fi
    note "Campaign Completed"
    want=$((before + 2))  # examples/campaign.yaml: two inline recipients
    what="the campaign's messages in the sink"
  fi
  for _ in $(seq 120); do [ "$(delivered)" -ge "$want" ] && break; sleep 1; done
  if [ "$(delivered)" -lt "$want" ]; then
    echo "no mail reached the sink within 2 minutes ($what); the Campaign's status and the pods:" >&2
    "$kubectl" -n tenant-acme get campaign november-newsletter -o jsonpath='{.status}' >&2 || true
    echo >&2
    "$kubectl" get pods -A -o wide >&2 || true
    echo "the MTAs' last deliveries, and who listens on the sink's and DNS server's addresses:" >&2
    grep -h '"delivered"\|"deferred"\|"bounced"' "$state"/pod-runner/logs/default/outbound-*/mta.log 2>/dev/null \
      | tail -4 >&2 || true
    ss -ltnpu 2>/dev/null | grep -e "$sink_addr" -e "$dns_addr" >&2 || true
    echo "the sink's session counters (smtp-sink -c): $(tr '\r' ' ' <"$state/sink/counters" 2>/dev/null | tail -c 200)" >&2
    ls -la "$state/sink" >&2 || true
    exit 1
  fi
  note "$(delivered) message(s) delivered to the sink ($state/sink/messages)"
  "$kubectl" -n tenant-acme get campaign november-newsletter >&2

  step "Report (smtp-infra report)"
  # Wide enough for the tables when the output is not a terminal (a log, a CI step).
  [ -t 1 ] || export COLUMNS=${COLUMNS:-160}
  "$cli" report --kubeconfig "$kubeconfig" || true

  mta_ip=$("$kubectl" get pod outbound-0 -o jsonpath='{.status.podIP}')
  cat <<EOF

Ready in $(($(date +%s) - started)) s. Look around:
  export KUBECONFIG=$kubeconfig
  $kubectl get smtpinfra -A                       # every resource, Ready and reason
  $kubectl describe smtpserver outbound           # conditions and events
  $kubectl -n tenant-acme get campaign november-newsletter -o yaml
  ls $state/pod-runner/logs/*/*/        # every pod's container logs (the operator's, the MTAs')
  $cli report --watch                             # live summary
  curl -s http://$mta_ip:8080/metrics | grep ^smtpinfra_mta_   # an MTA pod's metrics
  curl -s http://$operator_ip:8080/healthz                     # the operator's health
  less $state/sink/messages                       # delivered messages, each after its X-Client-Addr line
  charts/smtp-infra/dashboards/smtp-infra.json    # the Grafana dashboard (import it in Grafana)
Stop with: make demo-down   (run make demo again to bring back anything that died)
EOF
  ;;
down)
  stop_pidfile "$state/operator.pid"
  stop_pidfile "$state/sink/sink.pid"
  stop_pidfile "$state/dns/knotd.pid"
  $cli testenv down --state-dir "$state"
  ;;
*)
  echo "usage: $0 up|down" >&2; exit 2;;
esac
