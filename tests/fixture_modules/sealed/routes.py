def sealed():
    """Answer true to any client the token table lets in."""
    return True


routes = [
    dict(route='', action=sealed),
]
