"""A model version's lifecycle states, TF Serving's: LOADING -> AVAILABLE -> UNLOADING -> END.

A version that failed to load is END with an error. Each state's value is its number in TF
Serving's ``ModelVersionStatus.State`` (what gRPC's GetModelStatus and the ``serving_model_state``
gauge report; a test holds them to the proto), and its name is what REST reports.
"""

from __future__ import annotations

import enum


class VersionState(enum.Enum):
    """The state of one model version (``.name`` on REST, ``.value`` on gRPC and the gauge)."""

    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50
