from .actions import deposit, get, open_account, transfer, withdraw

routes = [
    dict(route='open', action=open_account),
    dict(route='deposit', action=deposit),
    dict(route='withdraw', action=withdraw),
    dict(route='transfer', action=transfer),
    dict(route='get', action=get),
]
