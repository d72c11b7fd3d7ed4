from .actions import broken, roundtrip, select, select_steps, stream, timed, unescaped

routes = [
    dict(route='select', action=select),
    dict(route='select_steps', action=select_steps),
    dict(route='stream', action=stream),
    dict(route='roundtrip', action=roundtrip),
    dict(route='unescaped', action=unescaped),
    dict(route='broken', action=broken),
    dict(route='timed', action=timed),
]
