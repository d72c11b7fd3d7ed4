from .actions import broken, roundtrip, select, timed, unescaped

routes = [
    dict(route='select', action=select),
    dict(route='roundtrip', action=roundtrip),
    dict(route='unescaped', action=unescaped),
    dict(route='broken', action=broken),
    dict(route='timed', action=timed),
]
