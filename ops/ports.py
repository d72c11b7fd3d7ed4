"""Free loopback ports for the servers that the stack, the tests and the bench start."""
import errno
import random
import socket


def port_is_free(port, host='127.0.0.1'):
    """Tell whether nothing listens on host:port (an IPv4 or IPv6 address). The probe binds as gunicorn, nginx and
    PostgreSQL do, with SO_REUSEADDR, so a port whose last server left connections in TIME_WAIT counts as free;
    OSError when the machine has no such address."""
    with socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def free_ports(count):
    """Return count consecutive free loopback ports, from a random start so parallel runs rarely meet."""
    for _ in range(100):
        base = random.randint(20000, 60000 - count)
        if all(port_is_free(port) for port in range(base, base + count)):
            return list(range(base, base + count))
    raise RuntimeError(f'no {count} consecutive free ports')
