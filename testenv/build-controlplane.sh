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
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false

need() { for b in "$@"; do [ -x "$bin/$b" ] || return 0; done; return 1; }
log() { printf '[controlplane] %s\n' "$*" >&2; }

if need etcd; then
  log "building etcd"
  (cd "$here/go/etcd" && go build -trimpath -o "$bin/etcd.tmp" . && mv "$bin/etcd.tmp" "$bin/etcd")
fi

if need kube-apiserver kube-controller-manager kube-scheduler kubectl; then
  log "building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl ($K8S_VERSION)"
  major=${K8S_VERSION#v}; major=${major%%.*}
  minor=${K8S_VERSION#v*.}; minor=${minor%%.*}
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  tmp="$bin/.k8s.tmp"; mkdir -p "$tmp"
  (cd "$here/go/kubernetes" && go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
  mv "$tmp"/* "$bin/" && rmdir "$tmp"
fi

if need kwok; then
  log "building kwok"
  (cd "$here/go/kwok" && go build -trimpath -ldflags "-s -w" -o "$bin/kwok.tmp" sigs.k8s.io/kwok/cmd/kwok && mv "$bin/kwok.tmp" "$bin/kwok")
fi

if need helm; then
  log "building helm"
  (cd "$here/go/helm" && go build -trimpath -ldflags "-s -w" -o "$bin/helm.tmp" helm.sh/helm/v3/cmd/helm && mv "$bin/helm.tmp" "$bin/helm")
fi

# promtool checks and unit-tests the chart's Prometheus rules; its version is the
# github.com/prometheus/prometheus requirement of its wrapper module, and it lives in its own
# cache directory so a Prometheus bump rebuilds only promtool.
PROM_VERSION=$(awk '$1 == "require" && $2 == "github.com/prometheus/prometheus" { print $3 }' "$here/go/promtool/go.mod")
[ -n "$PROM_VERSION" ] || { echo "no prometheus requirement in $here/go/promtool/go.mod" >&2; exit 1; }
promtool_bin="$cache/promtool-$PROM_VERSION/bin"
if [ ! -x "$promtool_bin/promtool" ]; then
  log "building promtool ($PROM_VERSION)"
  mkdir -p "$promtool_bin"
  (cd "$here/go/promtool" && go build -trimpath -ldflags "-s -w" -o "$promtool_bin/promtool.tmp" \
      github.com/prometheus/prometheus/cmd/promtool && mv "$promtool_bin/promtool.tmp" "$promtool_bin/promtool")
fi

log "binaries in $bin"
echo "$bin"
