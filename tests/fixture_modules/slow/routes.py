from .actions import (backend, sleep, stream, swallow_cancels, wait_then_write, write_in_a_transaction_then_wait,
                      write_then_answer, write_then_wait)

routes = [
    dict(route='sleep', action=sleep),
    dict(route='backend', action=backend),
    dict(route='stream', action=stream),
    dict(route='write_then_wait', action=write_then_wait),
    dict(route='wait_then_write', action=wait_then_write),
    dict(route='write_in_a_transaction_then_wait', action=write_in_a_transaction_then_wait),
    dict(route='swallow_cancels', action=swallow_cancels),
    dict(route='write_then_answer', action=write_then_answer),
]
