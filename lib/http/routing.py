"""Route matching for fixed paths in one dict lookup, ahead of werkzeug's matcher, which keeps every other case."""
from werkzeug.routing import MapAdapter


def fixed_rules(url_map):
    """Return {(path, method): rule} for every rule without variables that werkzeug would match as it is."""
    table = {}
    for rule in url_map.iter_rules():
        if rule.arguments or rule.build_only or rule.redirect_to or rule.websocket or rule.host or rule.subdomain:
            continue
        for method in rule.methods or ():
            table.setdefault((rule.rule, method), rule)
    return table


class FixedRulesFirst(MapAdapter):
    """A MapAdapter that looks the request's exact path and method up in a table before matching the usual way.

    A miss (another method, a trailing or doubled slash, a path with variables, an unknown path) goes to
    werkzeug, so 404, 405, OPTIONS and redirects stay exactly its answers.
    """

    def __init__(self, table, url_map, request):
        environ = request.environ
        super().__init__(url_map, environ.get('HTTP_HOST') or environ.get('SERVER_NAME', ''),
                         environ.get('SCRIPT_NAME') or '/', url_map.default_subdomain or '',
                         environ.get('wsgi.url_scheme', 'http'), request.path, request.method,
                         environ.get('QUERY_STRING', ''))
        self.table = table

    def match(self, path_info=None, method=None, return_rule=False, query_args=None, websocket=None):
        """Return the request's own rule from the table when it is there, else werkzeug's match."""
        if path_info is None and method is None and websocket is None:
            rule = self.table.get((self.path_info, self.default_method))
            if rule is not None:
                return (rule, {}) if return_rule else (rule.endpoint, {})
        return super().match(path_info, method, return_rule, query_args, websocket)
