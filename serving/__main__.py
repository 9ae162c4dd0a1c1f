"""``python -m serving --repository model_repository [options]``; ``--help`` lists every option."""

from __future__ import annotations

import asyncio
import logging
import sys

from serving.settings import settings_from_args


def main(argv: list[str] | None = None) -> int:
    """Parse options (environment SERVING_*, then CLI), serve until SIGTERM/SIGINT."""
    argv = sys.argv[1:] if argv is None else argv
    settings = settings_from_args(argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    from serving.observe import RequestIdFilter

    for handler in logging.getLogger().handlers:  # every line about a request names its id
        handler.addFilter(RequestIdFilter())
    if settings.workers != 1:
        from serving.workers import Supervisor

        return Supervisor(settings, argv).run()
    if settings.reuse_port:
        from serving.workers import follow_supervisor

        follow_supervisor()
    # Imported here, not at the top: the JSON decode processes (spawned) import this module as
    # their __main__, and need none of the gateway.
    from serving.gateway import Gateway

    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # uvloop is optional (e.g. Windows); asyncio's loop works, slower
        runner = asyncio.Runner()
    with runner:
        runner.run(Gateway(settings).serve_forever())
    return 0


if __name__ == "__main__":
    sys.exit(main())
