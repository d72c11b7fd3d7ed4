from .actions import (add, crash, echo, fail_with, flaky, generated, greet, hold, items, missing, pid, probe_values,
                      python_values, raw_rows, sized, sqlstate, with_status)

routes = [
    dict(route='', action=echo),
    dict(route='echo', action=echo),
    dict(route='greet', action=greet),
    dict(route='items', action=items),
    dict(route='sqlstate', action=sqlstate),
    dict(route='flaky', action=flaky),
    dict(route='values', action=probe_values),
    dict(route='python-values', action=python_values),
    dict(route='crash', action=crash),
    dict(route='missing', action=missing),
    dict(route='fail', action=fail_with),
    dict(route='status', action=with_status),
    dict(route='sized', action=sized),
    dict(route='hold', action=hold),
    dict(route='pid', action=pid),
    dict(route='add', action=add),
    dict(route='raw-rows', action=raw_rows),
    dict(route='reports/daily', action=echo),
    dict(route='generated', action=generated),
]
