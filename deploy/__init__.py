"""Deployment scripts, run from the repository root as modules (``python -m deploy.compose_check``,
``python -m deploy.compose_v2``); not part of the installed distribution."""
