"""Container health probe: exit 0 when the service's /readyz answers 200, 1 otherwise.

Standard library only (python:3.11-slim has no curl). Used by the Dockerfile's
HEALTHCHECK and by docker-compose.yml.

URL, first match wins: argv[1], $LARIMAR_HEALTHCHECK_URL,
http://127.0.0.1:$LARIMAR_PORT/readyz (port 8000 when unset).
Timeout in seconds: $LARIMAR_HEALTHCHECK_TIMEOUT (default 4).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def probe_url(argv: list[str]) -> str:
    if len(argv) > 1 and argv[1]:
        return argv[1]
    env_url = os.environ.get("LARIMAR_HEALTHCHECK_URL")
    if env_url:
        return env_url
    return f"http://127.0.0.1:{os.environ.get('LARIMAR_PORT', '8000')}/readyz"


def main(argv: list[str]) -> int:
    url = probe_url(argv)
    timeout = float(os.environ.get("LARIMAR_HEALTHCHECK_TIMEOUT", "4"))
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:  # 4xx/5xx, e.g. 503 while models load
        status = exc.code
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if status == 200:
        return 0
    print(f"unhealthy: {url}: HTTP {status}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
