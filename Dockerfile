# syntax=docker/dockerfile:1
# One image for both processes: `changegate serve` (the webhook, the default) and
# `changegate operator`; the Helm chart passes the subcommand as args.

# --- builder: the project and every dependency as wheels ---------------------------------
# Plain Python, no compiler needed: every dependency publishes manylinux wheels for amd64
# and arm64, and the final image gets only the wheels. Same Python and Debian release as
# the final stage, so the wheels fit it.
FROM python:3.11-bookworm AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# pyproject.toml names README.md as the package's readme, so the build needs it.
COPY pyproject.toml README.md ./
COPY controller ./controller
RUN pip wheel --wheel-dir /wheels .

# --- final: the wheels on a clean slim image, no build tools -------------------------------
FROM python:3.11-slim-bookworm
# No .pyc writes (the root filesystem is read-only in the pod); logs unbuffered; HOME is
# the pod's writable /tmp (uid 65532 has no home directory).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp
# The wheels are bind-mounted from the builder, so they never become a layer. pip,
# setuptools and wheel go afterwards: nothing installs anything at run time.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index /wheels/*.whl \
 && pip uninstall --yes pip setuptools wheel
LABEL org.opencontainers.image.title="changegate" \
      org.opencontainers.image.description="Two signed approvals for every tier-1 Kubernetes change" \
      org.opencontainers.image.licenses="Apache-2.0"
# 65532: the conventional non-root "nonroot" uid (distroless); the chart runs as it too.
USER 65532:65532
ENTRYPOINT ["changegate"]
CMD ["serve"]
