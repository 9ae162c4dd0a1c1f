"""The HTTP route table: every path the gateway serves, in FastAPI's template syntax.

Both consumers read it from here: ``rest/app.py`` registers each template with FastAPI (and so
with the OpenAPI document), and the front door (``rest/front.py``) compiles the hot POST routes,
TF Serving ``:predict`` and KServe V2 ``/infer``, into the matchers it serves them with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: A TF Serving model, a version of it, or a labelled version.
V1_MODEL = (
    "/v1/models/{name}",
    "/v1/models/{name}/versions/{version}",
    "/v1/models/{name}/labels/{label}",
)
#: A KServe V2 model, or a version of it.
V2_MODEL = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")

#: Triton's statistics extension: every model's, or (as a suffix of ``V2_MODEL``) one model's
#: or one version's. Before ``/v2/models/{name}`` in the app, which would take "stats" for a name.
V2_ALL_STATS = "/v2/models/stats"
V2_STATS_SUFFIX = "/stats"

V2_SERVER = "/v2"
V2_LIVE = "/v2/health/live"
V2_READY = "/v2/health/ready"
METRICS = "/metrics"
#: Paths that need no API key when ``auth_exempt_health`` is on (probes and scrapers).
AUTH_EXEMPT_PREFIXES = ("/v2/health/", METRICS)


@dataclass(frozen=True)
class HotRoute:
    """A POST route the front door serves without the web framework."""

    #: the templates, as registered with FastAPI
    templates: tuple[str, ...]
    #: what a path parameter may contain (TF Serving's ``:verb`` suffix forbids ':' in v1 names)
    segment: str

    def matchers(self) -> tuple[re.Pattern[str], ...]:
        """One anchored regex per template, its parameters as named groups."""
        return tuple(
            re.compile(
                "^"
                + re.sub(
                    r"\\{(\w+)\\}",
                    lambda m: f"(?P<{m.group(1)}>{self.segment})",
                    re.escape(template),
                )
                + "$"
            )
            for template in self.templates
        )


PREDICT = HotRoute(tuple(base + ":predict" for base in V1_MODEL), segment="[^/:]+")
INFER = HotRoute(tuple(base + "/infer" for base in V2_MODEL), segment="[^/]+")
