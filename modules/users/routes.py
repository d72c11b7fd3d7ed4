from .actions import create, delete, export, get, list_users, update, upsert

routes = [
    dict(route='create', action=create),
    dict(route='get', action=get),
    dict(route='update', action=update),
    dict(route='delete', action=delete),
    dict(route='upsert', action=upsert),
    dict(route='list', action=list_users),
    dict(route='export', action=export),
]
