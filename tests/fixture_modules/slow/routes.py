from .actions import backend, sleep, stream

routes = [
    dict(route='sleep', action=sleep),
    dict(route='backend', action=backend),
    dict(route='stream', action=stream),
]
