"""Free loopback ports for the servers that the stack, the tests and the bench start."""
import errno
import random
import socket
from pathlib import Path


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
    """Return count consecutive free loopback ports, from a random start so parallel runs rarely meet, below the
    kernel's ephemeral range when it leaves room (Linux's ip_local_port_range): a server started under load must
    find its port free, not taken meanwhile as the source port of some outgoing connection."""
    low, high = port_range(count)
    for _ in range(100):
        base = random.randint(low, high - count)
        if all(port_is_free(port) for port in range(base, base + count)):
            return list(range(base, base + count))
    raise RuntimeError(f'no {count} consecutive free ports')


def port_range(count):
    """Return (lowest, highest) of the ports free_ports picks from: 10000 up to the ephemeral range, else (no room
    there, or no Linux) 20000-60000."""
    try:
        ephemeral = int(Path('/proc/sys/net/ipv4/ip_local_port_range').read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 0
    return (10000, ephemeral) if ephemeral - count > 10000 + 100 else (20000, 60000)
