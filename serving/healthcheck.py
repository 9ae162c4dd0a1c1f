"""The gateway's container health check: ready (KServe V2 readiness) on its own REST port.

    python -m serving.healthcheck        # exit 0 = every configured model has a loaded version

Reads the same ``SERVING_*`` settings as the gateway, so the probe follows ``SERVING_HTTP_PORT``
and, when API keys are on and health is not exempt, sends the first key. One word per argument,
so the exec-form HEALTHCHECK survives engines that split arguments at spaces (Podman's compose API).
"""

from __future__ import annotations

import sys

from clients.probe import check
from serving.settings import ServingSettings

READY_PATH = "/v2/health/ready"


def main() -> int:
    settings = ServingSettings(**{})  # every field from its SERVING_* variable or default
    port = settings.http_port or 8501
    headers = {}
    if settings.api_keys and not settings.auth_exempt_health:
        headers["x-api-key"] = settings.api_keys[0]
    return check(f"http://127.0.0.1:{port}{READY_PATH}", timeout=4.0, headers=headers)


if __name__ == "__main__":
    sys.exit(main())
