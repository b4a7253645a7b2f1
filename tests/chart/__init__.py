"""Tests of the Helm chart, its alerts and the image definition (charts/, Dockerfile)."""
