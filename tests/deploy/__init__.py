"""Tests of the deployment files (compose, Dockerfiles, Kubernetes, Prometheus, Grafana)."""
