"""Trusted proxies: the caller's address and scheme as the proxies in front of dbapi saw them."""
import ipaddress
from functools import lru_cache

# The schemes a proxy can have seen (X-Forwarded-Proto), in their normal lower case (RFC 3986 section 3.1).
SCHEMES = frozenset({'http', 'https'})


class TrustedProxies:
    """WSGI middleware: take REMOTE_ADDR and the URL scheme from what the nearest `hops` proxies forwarded.

    Each trusted proxy appends the address it saw to X-Forwarded-For (nginx's `$proxy_add_x_forwarded_for`),
    so only the last `hops` entries can be believed: anything left of them came from the caller. werkzeug's
    ProxyFix does the same, but it parses the headers as quoted-string lists: that cost about 5% of a request
    through nginx, and one stray double quote from the caller made it drop the whole header, so the proxy's
    own address stood in for the caller's.
    """

    def __init__(self, wsgi_app, hops):
        self.wsgi_app = wsgi_app
        self.hops = hops

    def __call__(self, environ, start_response):
        address = ip_address_text(self.trusted_entry(environ.get('HTTP_X_FORWARDED_FOR')))
        if address:
            environ['REMOTE_ADDR'] = address
        scheme = (self.trusted_entry(environ.get('HTTP_X_FORWARDED_PROTO')) or '').lower()
        if scheme in SCHEMES:
            environ['wsgi.url_scheme'] = scheme
        return self.wsgi_app(environ, start_response)

    def trusted_entry(self, header):
        """Return the entry of a comma-separated header that the farthest trusted proxy wrote, or None."""
        if not header:
            return None
        entries = header.rsplit(',', self.hops)
        if len(entries) < self.hops:
            return None
        return entries[-self.hops].strip() or None


@lru_cache(maxsize=4096)
def ip_address_text(entry):
    """Return entry (None, or a forwarded entry) when it is an IPv4 or IPv6 address, an IPv6 address's %zone dropped,
    else None: the peer's address stays, since a proxy writes only addresses (nginx's $remote_addr), and client.ip is
    an IP field in the index (ECS), which refuses a line whose value is not one (nor takes a zone). Cached: a proxy
    forwards the same few addresses."""
    try:
        address = ipaddress.ip_address(entry)
    except ValueError:
        return None
    # An IPv6 address's %zone is any text to ipaddress (trial Z: "::1%not an address at all").
    return str(address).partition('%')[0] if '%' in entry else entry
