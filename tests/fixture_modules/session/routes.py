from .actions import change_everything, local_outside_transaction, state

routes = [
    dict(route='change-everything', action=change_everything),
    dict(route='state', action=state),
    dict(route='local-outside-transaction', action=local_outside_transaction),
]
