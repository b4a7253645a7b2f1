#!/usr/bin/env bash
# Builds the e2e tools from the Go modules pinned in tests/cluster/{k8s,etcd,kwok,helm}/go.{mod,sum}:
#   k8s:  kube-apiserver, kubectl, kube-controller-manager, kube-scheduler
#   etcd: etcd          kwok: kwok (fake nodes)          helm: helm
# Each module goes into its own cache directory keyed by its version, so bumping kwok or helm
# does not rebuild Kubernetes:
#   ${CHANGEGATE_K8S_CACHE:-$HOME/.cache/changegate}/{k8s-<ver>,etcd-<ver>,kwok-<ver>,helm-<ver>}/bin/
# and one directory keyed by all four versions holds symlinks to every tool:
#   .../k8s-<ver>-etcd-<ver>-kwok-<ver>-helm-<ver>/bin/
# Prints that directory as the last line on stdout; everything else goes to stderr.
# A no-op (no Go needed) when the tools are already there.
# Exit codes: 0 ok, 3 Go missing or too old, anything else: the build failed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache="${CHANGEGATE_K8S_CACHE:-$HOME/.cache/changegate}"
# Versions come from the committed go.mod files, so a bump is a go.mod change (see README.md)
# and nothing here.
pinned() { awk -v m="$2" '$1 == m {print $2; exit}' "$here/$1/go.mod"; }
k8s_version=$(pinned k8s k8s.io/kubernetes)
etcd_version=$(pinned etcd go.etcd.io/etcd/server/v3)
kwok_version=$(pinned kwok sigs.k8s.io/kwok)
helm_version=$(pinned helm helm.sh/helm/v4)
[[ -n $k8s_version && -n $etcd_version && -n $kwok_version && -n $helm_version ]] ||
  { echo "build.sh: cannot read pinned versions" >&2; exit 1; }

# Smallest first, so a broken pin shows up before the long Kubernetes build.
modules=(kwok helm etcd k8s)
declare -A version=([k8s]=$k8s_version [etcd]=$etcd_version [kwok]=$kwok_version [helm]=$helm_version)
declare -A tools=([k8s]="kube-apiserver kubectl kube-controller-manager kube-scheduler"
                  [etcd]=etcd [kwok]=kwok [helm]=helm)
bin="$cache/k8s-$k8s_version-etcd-$etcd_version-kwok-$kwok_version-helm-$helm_version/bin"

have_all() {  # have_all DIR TOOL... (-x follows the symlinks in $bin)
  local dir=$1 t; shift
  for t in "$@"; do [[ -x $dir/$t ]] || return 1; done
}
all_tools() { local m; for m in "${modules[@]}"; do echo "${tools[$m]}"; done; }
# shellcheck disable=SC2046  # word splitting of the tool names is intended
if have_all "$bin" $(all_tools); then echo "$bin"; exit 0; fi

if ! command -v go >/dev/null; then
  echo "build.sh: Go is not installed; install Go >= 1.26 (or set KUBECONFIG for e2e tests)" >&2
  exit 3
fi
# GOTOOLCHAIN=local: fail with a clear message instead of silently downloading a toolchain.
# CGO_ENABLED=0: static binaries, as upstream builds all four (hack/lib/golang.sh
# KUBE_STATIC_BINARIES, etcd scripts/build_lib.sh, kwok hack/releases.sh, helm's Makefile).
# No GOSUMDB/GOFLAGS=-mod=mod: go.sum is committed and complete, so the checksum database is
# never asked and go.mod is never rewritten.
export GOTOOLCHAIN=local CGO_ENABLED=0
have=$(go env GOVERSION); have=${have#go}
for m in "${modules[@]}"; do
  need=$(awk '$1 == "go" {print $2; exit}' "$here/$m/go.mod")
  if [[ $(printf '%s\n%s\n' "$need" "$have" | sort -V | head -1) != "$need" ]]; then
    echo "build.sh: Go $have is older than the $need that tests/cluster/$m/go.mod needs" >&2
    exit 3
  fi
done

# Everything is built into a private directory and renamed at the end, so an interrupted build
# never leaves a half-filled bin/ that the fast paths would trust.
tmps=()
trap 'rm -rf "${tmps[@]}"' EXIT
fresh_tmp() {  # fresh_tmp FINAL_DIR: a new empty directory beside FINAL_DIR, in $tmp
  mkdir -p "$(dirname "$1")"
  tmp=$(mktemp -d "$1.tmp.XXXXXX")
  chmod 755 "$tmp"  # mktemp makes it 0700
  tmps+=("$tmp")
}
publish() { rm -rf "$2"; mv "$1" "$2"; }  # publish TMP FINAL

build_k8s() {  # $1: output directory
  # Version stamping as hack/lib/version.sh does it: the same -X on both version packages, so
  # /version and `kubectl version` report the pinned release and kubectl warns about no skew.
  local minor=${k8s_version#v1.}; minor=${minor%%.*}
  local ldflags="-s -w" kv
  for kv in "gitVersion=$k8s_version" gitMajor=1 "gitMinor=$minor" gitTreeState=clean \
            buildDate=1970-01-01T00:00:00Z; do
    ldflags+=" -X k8s.io/component-base/version.$kv -X k8s.io/client-go/pkg/version.$kv"
  done
  (cd "$here/k8s" && go build -buildvcs=false -trimpath -tags=selinux,notest,grpcnotrace \
    -ldflags "$ldflags" -o "$1/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl \
    k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler)
}

build_etcd() {
  # The etcd server module's root package is etcd's main (server/main.go); its version string
  # is the constant in go.etcd.io/etcd/api/v3/version, so it needs no stamping.
  (cd "$here/etcd" && go build -buildvcs=false -trimpath -ldflags "-s -w" -o "$1/etcd" \
    go.etcd.io/etcd/server/v3)
}

build_kwok() {
  # kwok's release script stamps sigs.k8s.io/kwok/pkg/consts.Version, whose default in the
  # tagged source already is the release ("0.8.0"), so no -X is needed.
  (cd "$here/kwok" && go build -buildvcs=false -trimpath -ldflags "-s -w" -o "$1/kwok" \
    sigs.k8s.io/kwok/cmd/kwok)
}

build_helm() {
  # As helm's Makefile does for a tagged build: the source only says "v4.3"; metadata is empty
  # for a tag. gitCommit stays empty: the module proxy does not tell the tag's commit.
  local pkg=helm.sh/helm/v4/internal/version
  (cd "$here/helm" && go build -buildvcs=false -trimpath \
    -ldflags "-s -w -X $pkg.version=$helm_version -X $pkg.metadata= -X $pkg.gitTreeState=clean" \
    -o "$1/helm" helm.sh/helm/v4/cmd/helm)
}

start=$SECONDS
for m in "${modules[@]}"; do
  dir="$cache/$m-${version[$m]}/bin"
  # shellcheck disable=SC2086
  have_all "$dir" ${tools[$m]} && continue
  echo "build.sh: building $m ${version[$m]} (minutes on 2 cores when cold)" >&2
  began=$SECONDS
  fresh_tmp "$dir"
  "build_$m" "$tmp"
  publish "$tmp" "$dir"
  echo "build.sh: built ${tools[$m]} in $((SECONDS - began)) s" >&2
done

# The combined directory: relative symlinks, so the cache can be moved as a whole.
fresh_tmp "$bin"
for m in "${modules[@]}"; do
  for t in ${tools[$m]}; do ln -s "../../$m-${version[$m]}/bin/$t" "$tmp/$t"; done
done
publish "$tmp" "$bin"
echo "build.sh: done in $((SECONDS - start)) s" >&2
echo "$bin"
