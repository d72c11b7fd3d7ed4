from .actions import whoami

routes = [
    dict(route='whoami', action=whoami),
]
