#!/usr/bin/env bash
# Builds the changegate image from the Dockerfile on a machine with no image registry and
# no container daemon: buildah (chroot isolation) only, root needed.
#
# The Dockerfile's BASE defaults to the public debian:bookworm-slim. Here the base is made
# from Debian packages with mmdebstrap instead: the same release, with Debian's python3, so
# the image built is the one the Dockerfile describes. The base's root filesystem tar is
# cached in ~/.cache/changegate/image-base under a hash of everything that makes it, so CI
# and reruns make it once.
#
# Usage: tests/image/build.sh [IMAGE]   (default localhost/changegate:dev)
# Prints the image's size and the time each step took; the e2e test tests/e2e/test_image.py
# runs the image it built.
set -euo pipefail
cd "$(dirname "$0")/../.."

IMAGE="${1:-localhost/changegate:dev}"
SUITE=bookworm
VARIANT=minbase
# What the Dockerfile's python stage installs, and python3-venv for its builder.
PACKAGES=python3,python3-venv,ca-certificates
# The release as the public image has it: with its updates and security fixes.
SOURCES=(
  "deb http://deb.debian.org/debian $SUITE main"
  "deb http://deb.debian.org/debian $SUITE-updates main"
  "deb http://deb.debian.org/debian-security $SUITE-security main"
)
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/changegate/image-base"

for tool in buildah mmdebstrap; do
  command -v "$tool" >/dev/null || { echo "$tool not found: apt-get install buildah mmdebstrap" >&2; exit 1; }
done

now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

key="$( { mmdebstrap --version; echo "$VARIANT $SUITE $PACKAGES"; printf '%s\n' "${SOURCES[@]}"; } \
  | sha256sum | cut -c1-16)"
tar="$CACHE/$SUITE-$key.tar"
base="localhost/changegate-base:$SUITE-$key"

t=$(now)
if [ ! -s "$tar" ]; then
  mkdir -p "$CACHE"
  # Written beside and renamed, so an interrupted run never leaves a half tar in the cache.
  mmdebstrap --quiet --variant="$VARIANT" --include="$PACKAGES" "$SUITE" "$tar.part" \
    "${SOURCES[@]}"
  mv "$tar.part" "$tar"
  echo "base: made $tar in $(since "$t") s"
else
  echo "base: cached $tar"
fi

t=$(now)
if ! buildah inspect --type image "$base" >/dev/null 2>&1; then
  # A root filesystem tar as a one-layer image (what `podman import` does, without podman).
  c="$(buildah from scratch)"
  buildah add --quiet "$c" "$tar" /
  buildah commit --quiet --rm "$c" "$base" >/dev/null
  echo "base: imported as $base in $(since "$t") s"
else
  echo "base: $base already in local storage"
fi

# Behind a TLS-intercepting proxy (this machine's pip names its CA), pip in the builder gets
# that CA as build secrets, never as a layer (see the Dockerfile's builder).
secrets=()
host_ca="$(python3 -m pip config get global.cert 2>/dev/null || true)"
host_ca="${PIP_CERT:-$host_ca}"
if [ -n "$host_ca" ] && [ -s "$host_ca" ]; then
  pipconf="$(mktemp)"
  trap 'rm -f "$pipconf"' EXIT
  printf '[global]\ncert = /run/secrets/pip-ca.crt\n' >"$pipconf"
  secrets=(--secret "id=pip.conf,src=$pipconf" --secret "id=pip-ca.crt,src=$host_ca")
fi

t=$(now)
# --layers: a rerun with unchanged sources reuses every step.
buildah bud --quiet --layers --isolation chroot --build-arg "BASE=$base" "${secrets[@]}" \
  -t "$IMAGE" . >/dev/null
echo "image: built $IMAGE in $(since "$t") s"
echo "image: $IMAGE is $(buildah images --format '{{.Size}}' "$IMAGE" | head -1)"
