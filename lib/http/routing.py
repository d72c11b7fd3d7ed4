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
    """A stand-in for werkzeug's MapAdapter of a request whose match() looks the request's exact path and
    method up in a table first; the real adapter (from Flask's public create_url_adapter) is only bound
    when something else is asked of it.

    Binding makes werkzeug's adapter, which a fixed path needs no part of. A miss
    (another method, a trailing or doubled slash, a path with variables, an unknown path) goes to werkzeug,
    so 404, 405, OPTIONS and redirects stay exactly its answers; so does anything else (build, ...).
    """

    def __init__(self, table, path, method, bind):
        self.table = table
        self.path = path
        self.method = method
        self.bind = bind
        self.bound = None

    def adapter(self):
        """Return the werkzeug adapter of the request, bound on first use."""
        if self.bound is None:
            self.bound = self.bind()
        return self.bound

    def match(self, path_info=None, method=None, return_rule=False, query_args=None, websocket=None):
        """Return the request's own rule from the table when it is there, else werkzeug's match."""
        if path_info is None and method is None and websocket is None:
            rule = self.table.get((self.path, self.method))
            if rule is not None:
                return (rule, {}) if return_rule else (rule.endpoint, {})
        return self.adapter().match(path_info, method, return_rule, query_args, websocket)

    def __getattr__(self, name):
        return getattr(self.adapter(), name)
