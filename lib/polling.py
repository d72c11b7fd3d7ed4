"""A look at sockets that never waits and never yields: the standard library's poll, in a gevent worker too.

gevent patches select.select and select.poll to wait through its hub: every call, a zero timeout included, makes and
starts a watcher per socket and switches to the hub. A look that must not wait needs none of that (on a users/get
under gunicorn's gevent worker, the patched select of each pool borrow was about 4% of the worker's CPU samples).
gevent.monkey.get_original is gevent's documented way to reach the unpatched function.
"""
from gevent.monkey import get_original

system_poll = get_original('select', 'poll')


def ready_events(filenos, events):
    """Return {fileno: events} for each of filenos (ints) showing any of events (select.POLL* flags) now, without
    waiting; POLLHUP, POLLERR and POLLNVAL may show although not asked for."""
    poller = system_poll()
    for fileno in filenos:
        poller.register(fileno, events)
    return dict(poller.poll(0))
