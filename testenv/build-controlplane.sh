#!/usr/bin/env bash
# Builds the local control-plane binaries from the pinned Go wrapper modules in testenv/go/
# into a cache outside the repository. Only missing binaries are built, so a warm cache
# costs nothing. Usage: build-controlplane.sh [CACHE_DIR]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# The Kubernetes version is defined in one place: the k8s.io/kubernetes requirement of the
# wrapper module (testenv/go/kubernetes/go.mod, whose go.sum pins it). smtpinfra_testenv reads
# it from there too, for the cache path and the version tests render charts for.
K8S_VERSION=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3 }' "$here/go/kubernetes/go.mod")
[ -n "$K8S_VERSION" ] || { echo "no k8s.io/kubernetes requirement in $here/go/kubernetes/go.mod" >&2; exit 1; }
cache=${1:-${SMTP_INFRA_CACHE:-$HOME/.cache/smtp-infra}}
bin="$cache/controlplane-$K8S_VERSION/bin"
mkdir -p "$bin"
# One build at a time per cache: a second caller (a test session started while the build that
# make test began in the background still runs) waits for it, then finds the binaries there.
exec 9>"$bin/.build.lock"
flock 9
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false

need() { for b in "$@"; do [ -x "$bin/$b" ] || return 0; done; return 1; }
log() { printf '[controlplane] %s\n' "$*" >&2; }
clock() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }
total_start=$(date +%s)
# build WHAT CMD...: run CMD, saying every few seconds what is building and for how long, so a cold
# cache (Kubernetes compiled from source: many minutes) is never silent.
build() {
  local what=$1 start pid ticker rc=0
  shift
  start=$(date +%s)
  log "building $what"
  "$@" &
  pid=$!
  (
    while sleep "${SMTP_INFRA_BUILD_PROGRESS_SECONDS:-20}" && kill -0 "$pid" 2>/dev/null; do
      log "  still building $what: $(clock $(($(date +%s) - start))) so far ($(clock $(($(date +%s) - total_start))) in all)"
    done
  ) &
  ticker=$!
  wait "$pid" || rc=$?
  kill "$ticker" 2>/dev/null || true
  wait "$ticker" 2>/dev/null || true
  if [ "$rc" -ne 0 ]; then
    log "building $what failed after $(clock $(($(date +%s) - start)))"
    return "$rc"
  fi
  log "built $what in $(clock $(($(date +%s) - start)))"
}

build_etcd() { cd "$here/go/etcd" && go build -trimpath -o "$bin/etcd.tmp" . && mv "$bin/etcd.tmp" "$bin/etcd"; }
build_kubernetes() {
  local major minor ldflags pkg tmp="$bin/.k8s.tmp"
  major=${K8S_VERSION#v}; major=${major%%.*}
  minor=${K8S_VERSION#v*.}; minor=${minor%%.*}
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  mkdir -p "$tmp"
  (cd "$here/go/kubernetes" && go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
  mv "$tmp"/* "$bin/" && rmdir "$tmp"
}
build_kwok() { cd "$here/go/kwok" && go build -trimpath -ldflags "-s -w" -o "$bin/kwok.tmp" sigs.k8s.io/kwok/cmd/kwok && mv "$bin/kwok.tmp" "$bin/kwok"; }
build_helm() { cd "$here/go/helm" && go build -trimpath -ldflags "-s -w" -o "$bin/helm.tmp" helm.sh/helm/v3/cmd/helm && mv "$bin/helm.tmp" "$bin/helm"; }

# promtool checks and unit-tests the chart's Prometheus rules; its version is the
# github.com/prometheus/prometheus requirement of its wrapper module, and it lives in its own
# cache directory so a Prometheus bump rebuilds only promtool.
PROM_VERSION=$(awk '$1 == "require" && $2 == "github.com/prometheus/prometheus" { print $3 }' "$here/go/promtool/go.mod")
[ -n "$PROM_VERSION" ] || { echo "no prometheus requirement in $here/go/promtool/go.mod" >&2; exit 1; }
promtool_bin="$cache/promtool-$PROM_VERSION/bin"
build_promtool() {
  mkdir -p "$promtool_bin"
  cd "$here/go/promtool" && go build -trimpath -ldflags "-s -w" -o "$promtool_bin/promtool.tmp" \
      github.com/prometheus/prometheus/cmd/promtool && mv "$promtool_bin/promtool.tmp" "$promtool_bin/promtool"
}

todo=()
need etcd && todo+=(etcd)
need kube-apiserver kube-controller-manager kube-scheduler kubectl && todo+=(kubernetes)
need kwok && todo+=(kwok)
need helm && todo+=(helm)
[ -x "$promtool_bin/promtool" ] || todo+=(promtool)
if [ ${#todo[@]} -gt 0 ]; then
  log "to build into $bin: ${todo[*]} (Kubernetes $K8S_VERSION from source: several minutes on a cold Go cache)"
fi
n=0
for step in "${todo[@]}"; do
  n=$((n + 1))
  case $step in
    kubernetes) what="kube-apiserver, kube-controller-manager, kube-scheduler, kubectl ($K8S_VERSION)" ;;
    promtool) what="promtool ($PROM_VERSION)" ;;
    *) what=$step ;;
  esac
  build "[$n/${#todo[@]}] $what" "build_$step"  # in the background, i.e. a subshell: its cd stays there
done

if [ ${#todo[@]} -gt 0 ]; then
  log "built ${todo[*]} in $(clock $(($(date +%s) - total_start)))"
fi
log "binaries in $bin"
echo "$bin"
