# syntax=docker/dockerfile:1
# One image for both processes: `changegate serve` (the webhook, the default) and
# `changegate operator`; the Helm chart passes the subcommand as args.

# Debian 12 (bookworm) with Debian's own python3 (3.11). The default is the public image;
# tests/image/build.sh passes a base it makes from Debian packages with mmdebstrap (no
# registry needed), the same release with the same packages, so the image it tests is this
# one.
ARG BASE=debian:bookworm-slim

# --- python: the base plus Debian's python3 and the image's user -----------------------------
FROM ${BASE} AS python
# Not pinned: the release pins them, and Debian's mirror serves only the current point
# release's version, so a pinned version stops building at the next security update. On a
# base that has them (mmdebstrap's) this installs nothing.
# uid 65532 gets a passwd entry ("nonroot", as in distroless): the operator (kopf) names
# itself with getpass.getuser(), which raises for a uid without one.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 nonroot \
 && useradd --no-log-init --uid 65532 --gid 65532 --home-dir /tmp \
      --no-create-home --shell /usr/sbin/nologin nonroot

# --- builder: changegate and its dependencies in a venv ------------------------------------
# Plain Python, no compiler: every dependency publishes manylinux wheels for amd64 and
# arm64, and changegate itself is pure Python. pip stays in this stage.
FROM python AS builder
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# pyproject.toml names README.md (the readme) and LICENSE (license-files): the build reads both.
COPY pyproject.toml README.md LICENSE ./
COPY controller ./controller
# The venv's python is a symlink to the base's /usr/bin/python3, which the final stage has
# at the same path. pip and setuptools go afterwards: nothing installs anything at run time.
# A builder behind a TLS-intercepting proxy hands in a pip config and its CA as secrets
# (tests/image/build.sh does when the host's pip names a CA); they never become a layer,
# and without them pip uses its own CAs.
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    --mount=type=secret,id=pip-ca.crt \
    python3 -m venv /opt/changegate \
 && /opt/changegate/bin/pip install /src \
 && /opt/changegate/bin/pip uninstall --yes pip setuptools

# --- final: the venv on the base, no build tools --------------------------------------------
FROM python
COPY --from=builder /opt/changegate /opt/changegate
# No .pyc writes (the root filesystem is read-only in the pod; pip compiled the venv's
# already); logs unbuffered; HOME is the pod's writable /tmp (uid 65532 has no home).
ENV PATH=/opt/changegate/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
LABEL org.opencontainers.image.title="changegate" \
      org.opencontainers.image.description="Two signed approvals for every tier-1 Kubernetes change" \
      org.opencontainers.image.licenses="Apache-2.0"
# 65532: the conventional non-root "nonroot" uid (distroless); the chart runs as it too.
USER 65532:65532
ENTRYPOINT ["changegate"]
CMD ["serve"]
