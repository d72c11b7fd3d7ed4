"""TrustedProxies: the caller's address and scheme come from the last TRUSTED_PROXY_HOPS forwarded entries only."""
import pytest

from lib.http.proxies import TrustedProxies

PEER = '10.0.0.2'


def seen_by_app(hops, **headers):
    """Return the (REMOTE_ADDR, wsgi.url_scheme) that the wrapped app sees for a request with headers."""
    seen = {}

    def app(environ, start_response):
        seen.update(address=environ['REMOTE_ADDR'], scheme=environ['wsgi.url_scheme'])
        return []
    environ = {'REMOTE_ADDR': PEER, 'wsgi.url_scheme': 'http',
               **{f'HTTP_{name}': value for name, value in headers.items()}}
    TrustedProxies(app, hops)(environ, None)
    return seen['address'], seen['scheme']


@pytest.mark.parametrize('hops, forwarded_for, address', [
    (1, '203.0.113.7', '203.0.113.7'),
    (1, '198.51.100.1, 203.0.113.7', '203.0.113.7'),  # the caller's own claim is left of the proxy's entry
    (1, '"198.51.100.1, 203.0.113.7', '203.0.113.7'),  # a stray quote from the caller changes nothing
    (2, '198.51.100.1, 203.0.113.7, 10.0.0.1', '203.0.113.7'),
    (2, '10.0.0.1', PEER),  # fewer entries than trusted proxies: the header is not believed
    (1, ' , ', PEER),
    (1, '', PEER),
])
def test_the_address_is_the_entry_the_farthest_trusted_proxy_wrote(hops, forwarded_for, address):
    assert seen_by_app(hops, X_FORWARDED_FOR=forwarded_for)[0] == address


def test_without_forwarded_headers_the_peer_is_the_caller():
    assert seen_by_app(1) == (PEER, 'http')


@pytest.mark.parametrize('hops, proto, scheme', [(1, 'https', 'https'), (1, 'http, https', 'https'),
                                                 (2, 'https', 'http'), (2, 'https, http', 'https')])
def test_the_scheme_is_the_one_the_farthest_trusted_proxy_saw(hops, proto, scheme):
    assert seen_by_app(hops, X_FORWARDED_PROTO=proto)[1] == scheme


@pytest.mark.parametrize('forwarded_for, address', [
    ('999.1.1.1', PEER), ('not an ip', PEER), ('::::', PEER), ('[::1]', PEER), ('203.0.113.7:8080', PEER),
    ('2001:db8::7', '2001:db8::7'), ('::ffff:203.0.113.7', '::ffff:203.0.113.7'),
    ('::1%not an address at all', '::1'), ('fe80::1%999.1.1.1', 'fe80::1'),  # a zone is any text (trial Z)
])
def test_an_entry_that_is_no_ip_address_leaves_the_peers(forwarded_for, address):
    """Trial X: a caller that reached a replica directly had 999.1.1.1 logged as client.ip, a field an index maps
    as an IP address (ECS), so the line was refused."""
    assert seen_by_app(1, X_FORWARDED_FOR=forwarded_for)[0] == address


@pytest.mark.parametrize('proto, scheme', [('javascript', 'http'), ('ftp', 'http'), ('https\x00', 'http'),
                                           ('HTTPS ', 'https')])  # schemes are case-insensitive (RFC 3986 3.1)
def test_a_scheme_other_than_http_or_https_leaves_the_peers(proto, scheme):
    assert seen_by_app(1, X_FORWARDED_PROTO=proto)[1] == scheme
