"""A plain HTTP client for the bench's one-off calls: the streamed export and the cold start's first 200."""
import http.client
import json

from .servers import BENCH_TOKEN

READ_SIZE = 1 << 20


def post(port, path, body, timeout=10):
    """POST body as JSON to 127.0.0.1:port with the bench token; return the open response."""
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
    conn.request('POST', path, json.dumps(body),
                 {'Authorization': f'Bearer {BENCH_TOKEN}', 'Content-Type': 'application/json'})
    return conn.getresponse()


def status_of(port, path, body):
    """Return the status of one POST, or None when nothing answers yet."""
    try:
        response = post(port, path, body, timeout=2)
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None


def count_marks(read, mark):
    """Read a stream to its end with read(size); return how many times mark occurs in it."""
    count = 0
    tail = b''
    while chunk := read(READ_SIZE):
        data = tail + chunk
        count += data.count(mark)
        # Keep the last len(mark) - 1 bytes: a mark split between two chunks is then counted once.
        tail = data[len(data) - len(mark) + 1:] if len(mark) > 1 else b''
    return count
