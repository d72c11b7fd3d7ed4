from .actions import roundtrip, select

routes = [
    dict(route='select', action=select),
    dict(route='roundtrip', action=roundtrip),
]
