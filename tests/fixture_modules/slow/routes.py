from .actions import backend, sleep, stream, wait_then_write, write_then_wait

routes = [
    dict(route='sleep', action=sleep),
    dict(route='backend', action=backend),
    dict(route='stream', action=stream),
    dict(route='write_then_wait', action=write_then_wait),
    dict(route='wait_then_write', action=wait_then_write),
]
