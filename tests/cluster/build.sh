#!/usr/bin/env bash
# Builds the e2e control plane (kube-apiserver, kubectl, kube-controller-manager, etcd) from the
# Go modules pinned in tests/cluster/{k8s,etcd}/go.{mod,sum} into a cache keyed by version:
#   ${CHANGEGATE_K8S_CACHE:-$HOME/.cache/changegate}/k8s-<ver>-etcd-<ver>/bin/
# Prints that bin directory as the last line on stdout; everything else goes to stderr.
# A no-op (no Go needed) when the four binaries are already there.
# Exit codes: 0 ok, 3 Go missing or too old, anything else: the build failed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# Versions come from the committed go.mod files, so a bump is a go.mod change (see README.md)
# and nothing here.
k8s_version=$(awk '$1 == "k8s.io/kubernetes" {print $2; exit}' "$here/k8s/go.mod")
etcd_version=$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2; exit}' "$here/etcd/go.mod")
[[ -n $k8s_version && -n $etcd_version ]] || { echo "build.sh: cannot read pinned versions" >&2; exit 1; }

bin="${CHANGEGATE_K8S_CACHE:-$HOME/.cache/changegate}/k8s-${k8s_version}-etcd-${etcd_version}/bin"
tools=(kube-apiserver kubectl kube-controller-manager etcd)

have_all() { local t; for t in "${tools[@]}"; do [[ -x $bin/$t ]] || return 1; done; }
if have_all; then echo "$bin"; exit 0; fi

if ! command -v go >/dev/null; then
  echo "build.sh: Go is not installed; install Go >= 1.26 (or set KUBECONFIG for e2e tests)" >&2
  exit 3
fi
# GOTOOLCHAIN=local: fail with a clear message instead of silently downloading a toolchain.
# CGO_ENABLED=0: static binaries, as upstream builds these (hack/lib/golang.sh KUBE_STATIC_BINARIES,
# etcd scripts/build_lib.sh). No GOSUMDB/GOFLAGS=-mod=mod: go.sum is committed and complete, so the
# checksum database is never asked and go.mod is never rewritten.
export GOTOOLCHAIN=local CGO_ENABLED=0
need=$(awk '$1 == "go" {print $2; exit}' "$here/k8s/go.mod")
have=$(go env GOVERSION); have=${have#go}
if [[ $(printf '%s\n%s\n' "$need" "$have" | sort -V | head -1) != "$need" ]]; then
  echo "build.sh: Go $have is older than the $need that k8s.io/kubernetes $k8s_version needs" >&2
  exit 3
fi

# Build into a private directory and rename at the end, so an interrupted build never leaves a
# half-filled bin/ that the fast path above would trust.
mkdir -p "$(dirname "$bin")"
tmp=$(mktemp -d "$bin.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS

# Version stamping as hack/lib/version.sh does it: the same -X on both version packages, so
# /version and `kubectl version` report the pinned release and kubectl warns about no skew.
minor=${k8s_version#v1.}; minor=${minor%%.*}
ldflags="-s -w"
for kv in "gitVersion=$k8s_version" gitMajor=1 "gitMinor=$minor" gitTreeState=clean \
          buildDate=1970-01-01T00:00:00Z; do
  ldflags+=" -X k8s.io/component-base/version.$kv -X k8s.io/client-go/pkg/version.$kv"
done
echo "build.sh: building kubernetes $k8s_version (several minutes on 2 cores when cold)" >&2
(cd "$here/k8s" && go build -buildvcs=false -trimpath -tags=selinux,notest,grpcnotrace \
  -ldflags "$ldflags" -o "$tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl \
  k8s.io/kubernetes/cmd/kube-controller-manager)

# The etcd server module's root package is etcd's main (server/main.go); its version string is
# the constant in go.etcd.io/etcd/api/v3/version, so it needs no stamping.
echo "build.sh: building etcd $etcd_version" >&2
(cd "$here/etcd" && go build -buildvcs=false -trimpath -ldflags "-s -w" -o "$tmp/etcd" \
  go.etcd.io/etcd/server/v3)

chmod 755 "$tmp"  # mktemp made it 0700
rm -rf "$bin"
mv "$tmp" "$bin"
trap - EXIT
echo "build.sh: built ${tools[*]} in $((SECONDS - start)) s" >&2
echo "$bin"
