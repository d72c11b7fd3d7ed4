from .actions import bar, foo, index

routes = [
    dict(route='', action=index),
    dict(route='foo', action=foo),
    dict(route='bar', action=bar),
]
