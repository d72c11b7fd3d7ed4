"""Free loopback ports for the servers that the stack, the tests and the bench start."""
import random
import socket


def port_is_free(port):
    """Tell whether nothing listens on 127.0.0.1:port. The probe binds as gunicorn, nginx and PostgreSQL do, with
    SO_REUSEADDR, so a port whose last server left connections in TIME_WAIT counts as free."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(('127.0.0.1', port))
        except OSError:
            return False
    return True


def free_ports(count):
    """Return count consecutive free loopback ports, from a random start so parallel runs rarely meet."""
    for _ in range(100):
        base = random.randint(20000, 60000 - count)
        if all(port_is_free(port) for port in range(base, base + count)):
            return list(range(base, base + count))
    raise RuntimeError(f'no {count} consecutive free ports')
