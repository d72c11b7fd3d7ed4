"""Route matching for fixed paths in one dict lookup, ahead of werkzeug's matcher, which keeps every other case."""


def fixed_rules(url_map):
    """Return {(path, method): rule} for every rule without variables that werkzeug would match as it is."""
    table = {}
    for rule in url_map.iter_rules():
        if rule.arguments or rule.build_only or rule.redirect_to or rule.websocket or rule.host or rule.subdomain:
            continue
        for method in rule.methods or ():
            table.setdefault((rule.rule, method), rule)
    return table


class FixedRulesFirst:
    """Werkzeug's MapAdapter for a request (from the public Map.bind_to_environ), whose match() looks the
    request's exact path and method up in a table before matching the usual way.

    A miss (another method, a trailing or doubled slash, a path with variables, an unknown path) goes to
    werkzeug, so 404, 405, OPTIONS and redirects stay exactly its answers. Everything else (build, ...) is
    the adapter's own.
    """

    def __init__(self, adapter, table, path, method):
        self.adapter = adapter
        self.table = table
        self.path = path
        self.method = method

    def match(self, path_info=None, method=None, return_rule=False, query_args=None, websocket=None):
        """Return the request's own rule from the table when it is there, else werkzeug's match."""
        if path_info is None and method is None and websocket is None:
            rule = self.table.get((self.path, self.method))
            if rule is not None:
                return (rule, {}) if return_rule else (rule.endpoint, {})
        return self.adapter.match(path_info, method, return_rule, query_args, websocket)

    def __getattr__(self, name):
        return getattr(self.adapter, name)
