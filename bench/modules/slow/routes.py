from .actions import sleep

routes = [
    dict(route='sleep', action=sleep),
]
