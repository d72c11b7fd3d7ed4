"""Container health check: exit 0 when this replica answers GET /healthz (the Dockerfile's HEALTHCHECK)."""
import os
import sys
import urllib.request


def local_port():
    """Return the port gunicorn binds: the one in BIND, else PORT, else 8000."""
    bind = os.environ.get('BIND') or f":{os.environ.get('PORT') or 8000}"
    return bind.rsplit(':', 1)[1]


def main():
    """Ask this container's gunicorn for /healthz; return 0 when it answers 200."""
    try:
        with urllib.request.urlopen(f'http://127.0.0.1:{local_port()}/healthz', timeout=2) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f'healthcheck: {exc}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
