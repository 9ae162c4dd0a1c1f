"""A container health probe with the standard library only: GET a URL, exit 0 on a 2xx answer.

    python -m clients.probe http://127.0.0.1:8089/ [--timeout 4] [--header name:value ...]

Made for HEALTHCHECK lines in exec form, whose every argument must be one word: Podman's
Docker-compatible API splits a compose file's ``CMD`` arguments at spaces, so an inline
``python -c "import ...; ..."`` probe breaks there while this one does not. Light on purpose
(no httpx, no numpy): it runs every few seconds in every container.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request


def probe(url: str, timeout: float = 4.0, headers: dict[str, str] | None = None) -> str | None:
    """None when ``url`` answers a GET with 2xx, else why not."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            status = int(reply.status)
    except urllib.error.HTTPError as exc:
        return f"{url}: HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return f"{url}: {exc}"
    return None if 200 <= status < 300 else f"{url}: HTTP {status}"


def check(url: str, timeout: float = 4.0, headers: dict[str, str] | None = None) -> int:
    """Probe ``url`` as a health check does: 0 when healthy, else 1 with the reason on stderr."""
    problem = probe(url, timeout, headers)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds (default 4)")
    parser.add_argument("--header", action="append", default=[], metavar="NAME:VALUE")
    args = parser.parse_args(argv)
    headers = dict(h.split(":", 1) for h in args.header)
    return check(args.url, args.timeout, {k.strip(): v.strip() for k, v in headers.items()})


if __name__ == "__main__":
    sys.exit(main())
