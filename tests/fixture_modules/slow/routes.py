from .actions import backend, sleep, stream, write_then_wait

routes = [
    dict(route='sleep', action=sleep),
    dict(route='backend', action=backend),
    dict(route='stream', action=stream),
    dict(route='write_then_wait', action=write_then_wait),
]
