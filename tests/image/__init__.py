"""The container image (Dockerfile): build.sh builds it without a registry; container.py
runs it as a pod would, for tests/e2e/test_image.py."""
