"""Action decorators: use_schema, inject_conn and inject_db (the seed's names, its bugs fixed)."""
import contextvars
import copy
import datetime
import decimal
import functools
import inspect
import itertools
import logging
import operator
import random
import time
import types
import uuid
import weakref
from collections.abc import Iterator
from contextlib import suppress

import psycopg2
import psycopg2.errors
from flask import Response, current_app, has_request_context, request
from marshmallow import Schema
from psycopg2 import sql
from psycopg2.extras import RealDictCursor

from lib.db import DEFAULT, Db, LeasedStream, Lease
from lib.db.types import check_client_encoding, check_reading_styles
from lib.db.guard import StatementPastDeadline, refuse_commit_of_failed_transaction
from lib.db.session import note_action
from lib.db.unit import close_stream, in_transaction, time_left, transactional
from lib.errors import RETRYABLE_SQLSTATES, ApiError, lost_before_commit, returned_response_fault
from lib.jsonenc import JSON_MIMETYPE, ExactNumber, json_array_chunks, json_response
from lib.http.disconnect import WATCHER, ClientClosedRequest, ServerStopping, client_gone
from lib.http.exchange import CLIENT_KEY, COMMITTED_APART_KEY, COMMITTED_KEY, GONE_KEY, HELD_CONNECTIONS_KEY, \
    ROUTE_KEY, WAITED_ON_DATABASE_KEY, deadline_of

log = logging.getLogger(__name__)


SCHEMA_ATTRIBUTE = '__dbapi_schema__'
# On the function inject_conn or inject_db makes: the name of the database it borrows from (lib/modules.py checks it).
DATABASE_ATTRIBUTE = '__dbapi_database__'


# The route (lib/modules.py's Route) whose action, one without use_schema's mark, runs now in this context, else None.
UNVALIDATED_ROUTE = contextvars.ContextVar('dbapi_unvalidated_route', default=None)


class SchemaHidden(TypeError):
    """A function marked by use_schema was called while a route action without the mark ran (a decorator written
    without functools.wraps hid it, in a shape the start's look through what the action holds did not reach): the body
    reached it unvalidated, so it did not run. A 500, the module's bug (trial BY)."""


def use_schema(schema):
    """Validate the action's JSON body with a marshmallow schema (class or instance) before it runs; anything else is
    a TypeError where the module declares it, which stops the start with one line. The function returned refuses to
    run (SchemaHidden) while a route action without the mark runs: nothing validated the body it is given."""
    instance = schema() if isinstance(schema, type) and issubclass(schema, Schema) else schema
    if not isinstance(instance, Schema):
        raise TypeError(f'use_schema takes a marshmallow Schema class or instance, not {schema!r}')

    def decorate(action):
        if SCHEMA_ATTRIBUTE in getattr(action, '__dict__', {}):  # the second would replace the first unseen
            raise TypeError(f'use_schema twice on {getattr(action, "__qualname__", action)!r}: give it one schema')

        def validated(*args, **kwargs):
            if (route := UNVALIDATED_ROUTE.get()) is not None:
                raise SchemaHidden(f'{validated.__qualname__}, marked by use_schema, was called by the action of '
                                   f'{route.module}/{route.name}, which is not marked (a decorator written without '
                                   'functools.wraps hides the mark, or the action calls it itself): what it was given '
                                   'may come from a body nothing validated, so it did not run; give the action the '
                                   'mark (functools.wraps on its decorators) or a schema of its own (use_schema('
                                   'Schema) for none), or call the function under the mark, its __wrapped__')
            return action(*args, **kwargs)
        functools.update_wrapper(validated, action, updated=())  # the inner layers' marks stay theirs
        setattr(validated, SCHEMA_ATTRIBUTE, instance)
        SCHEMA_GUARDS.add(validated)
        return validated
    return decorate


# The functions use_schema returns, which pass their arguments and their return value through unchanged.
SCHEMA_GUARDS = weakref.WeakSet()


def answering_layer(action):
    """Return the layer of a route's action whose return value is the action's own: the action, or what the layers
    that pass a value through unchanged call (the functions use_schema returns, SCHEMA_GUARDS; a functools.partial; a
    staticmethod). Its inject_db encodes the response before its commit (answers_the_request); a decorator of the
    module's around it may change the value, so it gets it after the commit (trial CA)."""
    while is_schema_guard(action) or isinstance(action, (functools.partial, staticmethod)):
        action = action.func if isinstance(action, functools.partial) else action.__wrapped__
    return action


def is_schema_guard(action):
    """Tell whether action is a function use_schema returned (SCHEMA_GUARDS; asked of functions alone: a callable
    instance may be unhashable, which a WeakSet cannot look up)."""
    return isinstance(action, types.FunctionType) and action in SCHEMA_GUARDS


# How many layers wrapped_chain follows: a loop of __wrapped__, or an object that makes any attribute asked of it (an
# RPC proxy), went on for ever, a start that hung without a word (trial BY).
MOST_LAYERS = 100


def wrapped_chain(action):
    """Yield action and each callable inside it, outermost first: what functools.wraps (a decorator, a staticmethod)
    names as __wrapped__, and a functools.partial's function; a TypeError past MOST_LAYERS of them."""
    for _ in range(MOST_LAYERS):
        yield action
        action = action.func if isinstance(action, functools.partial) else getattr(action, '__wrapped__', None)
        if action is None:
            return
    raise TypeError(f'the action is wrapped more than {MOST_LAYERS} times (a loop of __wrapped__, or an object that '
                    'makes any attribute asked of it, an RPC proxy): wrap it in a function of your own')


def marks_of(action, attribute):
    """Return the values of attribute that the decorators of action set, outermost first (each in its own
    function's dictionary: a staticmethod or a partial does not copy it)."""
    return [vars(layer)[attribute] for layer in wrapped_chain(action) if attribute in getattr(layer, '__dict__', {})]


def schema_of(action):
    """Return the schema declared with use_schema on action, or None."""
    return next(iter(marks_of(action, SCHEMA_ATTRIBUTE)), None)


def without_first_parameter(action):
    """Return action's signature less its first parameter, which a decorator supplies."""
    signature = inspect.signature(action)
    parameters = list(signature.parameters.values())
    if not parameters or parameters[0].kind not in (parameters[0].POSITIONAL_ONLY, parameters[0].POSITIONAL_OR_KEYWORD):
        raise TypeError(f'{action.__qualname__} must take the injected connection as its first parameter')
    return signature.replace(parameters=parameters[1:])


def pool_for(database):
    """Return this process's pool for the named database."""
    return current_app.extensions['dbapi'].pools[database]


def with_retries(attempt, retries, deadline=None):
    """Call attempt(), again after a short pause when the database reports a serialization failure or deadlock,
    as long as the pause ends before deadline (a time.monotonic() value, or None). Each retry is a warning line
    whose error.code is the SQLSTATE (docs/logging.md)."""
    for tries_left in range(retries, -1, -1):
        try:
            return attempt()
        except psycopg2.Error as exc:
            if tries_left == 0 or exc.pgcode not in RETRYABLE_SQLSTATES:
                raise
            retry = retries - tries_left + 1
            pause = random.uniform(0, 0.02) * retry
            left = time_left(deadline)
            if left is not None and left <= pause:
                raise
            log.warning('The transaction is retried (%d of at most %d) after SQLSTATE %s', retry, retries, exc.pgcode,
                        extra={'error.code': exc.pgcode})
            time.sleep(pause)


# Values no action can change in place: arguments of these alone need no copy for a retry (a deep copy of three
# such keywords costs about 4 us).
UNCHANGEABLE_TYPES = frozenset({str, int, float, bool, type(None), bytes, decimal.Decimal, ExactNumber, uuid.UUID,
                                datetime.date, datetime.datetime, datetime.time, datetime.timedelta})


def replayable_arguments(args, kwargs, retries):
    """Return (retries, arguments): arguments() gives each attempt of a retried transaction (args, kwargs) as the first
    attempt got them, a replay a deep copy taken before it (an action may change what it is given: empty a list of
    items it inserts). Arguments copy.deepcopy cannot copy are not replayed: retries is then 0."""
    if not retries or all(type(value) in UNCHANGEABLE_TYPES for value in (*args, *kwargs.values())):
        return retries, lambda: (args, kwargs)
    try:
        kept = copy.deepcopy((args, kwargs))
    except Exception:  # an object of the action's own that refuses copying (a lock, an open file)
        return 0, lambda: (args, kwargs)
    first = iter([(args, kwargs)])
    return retries, lambda: next(first, None) or copy.deepcopy(kept)


def bulkhead_of_request():
    """Return (client name, most connections it may hold) of the request's caller, or (None, None) for none."""
    client = request.environ.get(CLIENT_KEY) if has_request_context() else None
    if client is None:
        return None, None
    config = current_app.config
    return client.name, client.max_connections or config['DB_CLIENT_MAX_CONNECTIONS'] or config['DB_POOL_MAX']


def lease_for_request(database, autocommit, named, deadline):
    """Borrow a Lease on database's pool for the request, counted against its client's bulkhead. A borrow refused
    (429, or the 503 or 504 of a wait that ended) whose client left while it waited is ClientClosedRequest (499)."""
    client, limit = bulkhead_of_request()
    try:
        lease = Lease(pool_for(database), autocommit, RealDictCursor if named else None, client=client,
                      client_limit=limit, deadline=deadline)
    except ApiError as exc:
        if has_request_context() and client_gone(request.environ):
            request.environ[GONE_KEY] = True  # as the watcher marks it: logged 499, nothing sent
            raise ClientClosedRequest() from exc
        raise
    if has_request_context():  # the access line of a client seen gone after the commit says it committed; the
        # action's own lease ends last, after its helpers'
        lease.after_end.append(functools.partial(operator.setitem, request.environ, COMMITTED_KEY))
    return lease


def watch_client(lease):
    """Have the query on lease's connection cancelled if the request's client goes away, until the lease ends. A
    client already gone (while its request waited for the connection, or before) marks the request over at once:
    the watcher's first look would come after the action's first statements had run."""
    watch = WATCHER.watch(request.environ, lease.conn, lease.deadline) if has_request_context() else None
    if watch is not None:
        lease.before_end.append(functools.partial(end_watch, watch))
        if client_gone(request.environ):
            WATCHER.cancel(watch)  # no statement runs yet: this only marks it (Watch.mark)
    return watch


def end_watch(watch, success):
    """Stop watching before the lease ends; a success is refused (ClientClosedRequest, and the lease rolls back) when
    the watcher saw the client go away while no statement ran, so that its cancel stopped nothing: nobody reads this
    answer. Forgotten first, so no later cancel can race the commit. An autocommit action's statements that ran stay
    committed; a stream's last batch was read, but its end is not committed either."""
    WATCHER.forget(watch)
    if success and watch.environ.get(GONE_KEY):
        raise ClientClosedRequest()


def cancelled_error(watch, exc, deadline, autocommit):
    """Return the error a request whose query was cancelled ends with: the watcher's (Watch.cancelled_error: the
    client gone, the worker stopping, the deadline), else StatementPastDeadline for a statement PostgreSQL's own
    statement_timeout cancelled past the request's deadline (a time.monotonic() value or None); else None. The
    session's timeout is the deadline by default, so PostgreSQL stops a statement begun in the request's first moments
    a few milliseconds past it, before the watcher looks (every POLL_SECONDS). A deadline's error says whether
    statements before it stay committed (autocommit)."""
    cancelled = watch.cancelled_error(exc) if watch is not None else None
    if cancelled is None and isinstance(exc, psycopg2.errors.QueryCanceled):
        left = time_left(deadline)
        if left is not None and left <= 0:
            cancelled = StatementPastDeadline()
    return StatementPastDeadline.of(autocommit) if isinstance(cancelled, StatementPastDeadline) else cancelled


def run_leased(database, autocommit, named, call, deadline=None, finish=None):
    """Run call(conn) on a borrowed connection; a returned iterator, or Response whose body is one, keeps it until it
    is consumed. A query cancelled
    because the client went away (499) or the worker is stopping (503) ends with that error; a transaction's
    statements end at deadline, and it is not committed past it (504). finish(result), when given, runs before the
    commit: an error in it (a value JSON cannot encode) rolls the transaction back."""
    environ = request.environ if has_request_context() else {}
    environ[WAITED_ON_DATABASE_KEY] = True
    lease = lease_for_request(database, autocommit, named, deadline)
    watch = watch_client(lease)
    held = environ.setdefault(HELD_CONNECTIONS_KEY, {})
    if any(value is not None for value in held.values()):  # a helper with a connection of its own (trial BG)
        environ[COMMITTED_APART_KEY] = True
    result = None
    try:
        if WATCHER.stopping:  # a connection that came free as the stopping worker cancelled the queries
            raise ServerStopping()
        lease.hold_to_deadline(current_app.config['DB_STATEMENT_TIMEOUT_MS'])
        note_action(lease.conn, autocommit)  # until the lease ends (Lease.end), a stream's end included
        # A decorated helper the action calls joins it (run_joined), one its stream's first item calls too (trial
        # BB); a helper with a lease of its own (autocommit inside a transaction) holds its own for the helpers it
        # calls, and gives its caller's back (trial AY).
        caller_holds, held[database] = held.get(database), lease.conn
        try:
            result = call(lease.conn)
            if isinstance(result, Iterator):
                # The first batch is fetched before the response starts: an error before the first row (a division by
                # zero, a bad value) is the request's own error with its status, never a 200 cut short at "[".
                first = list(itertools.islice(result, 1))
        except UnicodeDecodeError:  # text read after the action set client_encoding in SQL: say so
            check_client_encoding(lease.conn)
            raise
        finally:
            held[database] = caller_holds
        if isinstance(result, Iterator):
            lease.refuse_open_transaction()  # before the 200 goes out, not at the stream's end
        check_reading_styles(lease.conn)
        if finish is not None and not isinstance(result, Iterator):
            result = finish(result)
    except BaseException as exc:
        try:
            close_stream(result)  # a stream refused after its first batch stops reading before its connection goes
        finally:
            lease.end(success=False)
        cancelled = cancelled_error(watch, exc, lease.deadline, autocommit)
        if cancelled is None and not autocommit and not environ.get(COMMITTED_APART_KEY):
            cancelled = lost_before_commit(exc)  # its COMMIT not sent yet, and no helper committed apart
        if cancelled is not None:
            raise cancelled from exc
        raise
    streamed = isinstance(result, Response) and result.is_streamed
    if caller_holds is None and (streamed or isinstance(result, Iterator)):  # the request's own action's stream
        held[database] = STREAM_AFTER_ITS_ACTION
    if isinstance(result, Iterator):
        return LeasedStream(result, lease, first)
    if streamed:
        # Its body's code may use the connection as it is sent, as a returned iterator's does: it ran after the lease
        # ended, on a connection another request then held, and froze the worker (trial AJ).
        result.response = LeasedStream(result.response, lease)
        return result
    lease.end(success=True)
    return result


# The statuses an action may give its value ((value, status)); an error is raised as a lib.errors exception, whose
# answer is problem details (docs/contract.md, section 3). 204 and 304 answer with no body.
SUCCESS_STATUSES = range(200, 400)
NO_CONTENT_STATUSES = (204, 304)


def respond(result):
    """Turn an action's return value, or (value, status), into a JSON response; an iterator (a LeasedStream, a
    generator) is streamed as one JSON array; a flask Response is the answer, with status when it came as
    (Response, status), as flask takes it (a 500 before: trial AK), its status held to SUCCESS_STATUSES as any
    (its own 500 went out as it was, its transaction committed: trial AM), and its headers and Content-Length to what
    can go out (returned_response_fault: a TypeError, a 500 before the commit, where gunicorn's came after it)."""
    value, status = value_and_status((result, result.status_code) if isinstance(result, Response) else result)
    if isinstance(value, Response):
        check_returned_response(value, status)
    if status in NO_CONTENT_STATUSES:
        kept = []
        if isinstance(value, Response):
            value.close()  # its body's generator, unread: the answer has none
            kept = [(name, text) for name, text in value.headers.items()  # a 304's ETag (trial BX: all went)
                    if name.lower() not in ('content-type', 'content-length')]
        close_stream(value)  # a stream's connection goes back unread: the answer has no body
        response = Response(status=status, headers=kept)
        del response.headers['Content-Type']
        return response
    if isinstance(value, Response):
        if value.is_streamed and not value.direct_passthrough:  # send_file's is its file's
            value.headers.remove('Content-Length')  # known once sent: the server chunks it (trial BW: a wrong one)
        return value
    if isinstance(value, Iterator):
        return streamed(value, status)
    return json_response(value, status)


def check_returned_response(response, status):
    """Give a Response an action returned its status, then refuse it when it cannot go out as werkzeug sends it
    (returned_response_fault): a TypeError, a 500 before the commit, never one after the write as gunicorn's was."""
    response.status_code = status  # a 204's Content-Length and a 304's content headers are dropped as it goes out
    if fault := returned_response_fault(response, request.environ):
        response.close()
        raise TypeError(f'the Response the action returned {fault}')


def value_and_status(result):
    """Return (value, status) of an action's result: its own pair, or (result, 200); a status outside
    SUCCESS_STATUSES is a TypeError, the module's bug (a 500)."""
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], int)):
        return result, 200
    if result[1] not in SUCCESS_STATUSES:
        raise TypeError(f'an action returned the status {result[1]}: (value, status) takes 200-399; an error is '
                        'raised as a lib.errors exception, so that its answer is problem details (a row of two '
                        'values, the second an int, is returned as a list: list(row))')
    return result


def streamed(items, status):
    """Return a response that streams items as one JSON array, batch by batch, the first ("[" and the first batch)
    encoded before the answer starts: an error there (a value JSON cannot write, a query failing at its first row)
    is the request's own. Closing the response closes items (a LeasedStream gives its connection back), even when
    compression or the access log has since wrapped the body in iterators of their own."""
    chunks = json_array_chunks(items)
    try:
        head = list(itertools.islice(chunks, 2))
    except BaseException:
        close_stream(items)
        raise
    response = Response(itertools.chain(head, chunks), status, mimetype=JSON_MIMETYPE)
    response.call_on_close(functools.partial(close_stream, items))
    return response


def answers_the_request(environ, action):
    """Tell whether action is the route action of the request of environ (None: no request), or its answering_layer,
    whose return value becomes the response."""
    return environ is not None and getattr(environ.get(ROUTE_KEY), 'answering', None) is action


def injector(database, autocommit, named, first_argument):
    """Build a decorator that passes first_argument(conn), on a pooled connection, to the action first. A database
    that is no name (the action itself, under a decorator written without parentheses) or a flag that is not a bool
    is a TypeError where the module declares it ("yes" would read as true, 0.0 as false)."""
    if not isinstance(database, str):
        hint = ' (write the decorator with its parentheses: @inject_db(), @inject_conn())' if callable(database) else ''
        raise TypeError(f'the database must be named by a string, not {database!r}{hint}')
    for flag, value in (('autocommit', autocommit), ('named', named)):
        if not isinstance(value, bool):
            raise TypeError(f'{flag} must be True or False, not {value!r}')

    def decorate(action):
        @functools.wraps(action)
        def with_connection(*args, **kwargs):
            try:
                config = current_app.config
            except RuntimeError:  # no app context: Flask's "Working outside of application context" said nothing
                raise RuntimeError(AFTER_ITS_ACTION.format(action.__qualname__)) from None
            environ = request.environ if has_request_context() else None
            deadline = deadline_of(environ, config['REQUEST_DEADLINE_MS'])
            # The route's own action is encoded to its response before the commit, so that a value JSON
            # cannot encode is a 500 with nothing committed, never a 500 after the data was written.
            finish = respond if answers_the_request(environ, with_connection) else None

            held = environ.get(HELD_CONNECTIONS_KEY, {}).get(database) if environ is not None else None
            if held is STREAM_AFTER_ITS_ACTION:
                raise RuntimeError(AFTER_ITS_ACTION.format(action.__qualname__))
            if held is not None and (not autocommit or not in_transaction(held)):
                return run_joined(held, autocommit, named, lambda conn: action(first_argument(conn), *args, **kwargs))
            # Only a whole-action transaction can be replayed safely, with the arguments as the first attempt had them.
            retries, arguments = replayable_arguments(args, kwargs, 0 if autocommit else config['DB_RETRIES'])

            def attempt():
                given_args, given_kwargs = arguments()
                return run_leased(database, autocommit, named,
                                  lambda conn: action(first_argument(conn), *given_args, **given_kwargs), deadline,
                                  finish)
            return with_retries(attempt, retries, deadline)
        with_connection.__signature__ = without_first_parameter(action)
        setattr(with_connection, DATABASE_ATTRIBUTE, Borrow(database, 'db' if first_argument is Db else 'conn'))
        return with_connection
    return decorate


def run_joined(conn, autocommit, named, call):
    """Run call(conn) for a decorated helper an action calls on the connection the action holds of the same database,
    rather than on a second one (which would commit on its own, again at each retry of the action, and wait on a pool
    the action already drains): its statements join the action's transaction, or, on a connection in autocommit, run
    in one transaction of their own (transactional()) when the helper asks for one (autocommit=False). named sets
    the cursors' rows for the call (dicts or tuples). A helper asking for autocommit inside a transaction is not
    joined (injector): it borrows its own connection, as it asks."""
    cursor_factory, conn.cursor_factory = conn.cursor_factory, RealDictCursor if named else None
    try:
        if in_transaction(conn):
            return in_savepoint(conn, call)
        if autocommit:
            return call(conn)
        with transactional(conn):
            return call(conn)
    finally:
        conn.cursor_factory = cursor_factory


def in_savepoint(conn, call):
    """Run call(conn) in a savepoint of conn's transaction, as a helper with a connection of its own would run in a
    transaction: what it wrote is rolled back when it raises, and its caller, catching that, goes on in a transaction
    that still commits (PostgreSQL rolls back a whole transaction a statement failed in); its conn.rollback(), which
    would end its caller's transaction, is refused meanwhile (PooledConnection.rollback). Two round trips more."""
    conn.joined_helpers += 1
    savepoint, db = sql.Identifier(f'dbapi_helper_{conn.joined_helpers}'), Db(conn)
    try:
        db.execute(sql.SQL('SAVEPOINT {}').format(savepoint))
        try:
            result = call(conn)
            refuse_commit_of_failed_transaction(conn)  # it caught its own statement's error and went on (trial BB)
        except BaseException:
            with suppress(Exception):  # a request over, or a connection gone: its whole transaction goes anyway
                db.execute(sql.SQL('ROLLBACK TO SAVEPOINT {}').format(savepoint))
            raise
        db.execute(sql.SQL('RELEASE SAVEPOINT {}').format(savepoint))
        return result
    finally:
        conn.joined_helpers -= 1


# What a request's held connections map (HELD_CONNECTIONS_KEY) has for a database whose action returned a stream: the
# stream's items after its first are made once the action returned, some still inside the request (the answer's
# head takes the next when the first is an empty batch: trial BC), and a helper they call must not borrow a connection
# of its own, which would commit alone.
STREAM_AFTER_ITS_ACTION = object()
AFTER_ITS_ACTION = ('{} borrows a pooled connection, which only an action running has: called from a stream after '
                    'its action returned (an item after the first), it would commit on its own; read what the rows '
                    'need before the stream starts')


class Borrow:
    """The mark one inject_conn or inject_db decorator leaves: the database it borrows from, and the name
    docs/modules.md gives the parameter it passes (`conn`, `db`). functools.wraps copies it into every layer wrapped
    around that decorator: the same object, so it counts once."""

    __slots__ = ('database', 'parameter')

    def __init__(self, database, parameter):
        self.database = database
        self.parameter = parameter


def borrows_of(action):
    """Return the Borrow marks of action's inject_conn and inject_db decorators, one per decorator, outermost first."""
    return list({id(borrow): borrow for borrow in marks_of(action, DATABASE_ATTRIBUTE)}.values())


def databases_of(action):
    """Return the names of the databases the inject_conn and inject_db decorators of action borrow from, one per
    decorator, outermost first."""
    return [borrow.database for borrow in borrows_of(action)]


def raw_connection(conn):
    """Give the action the raw connection itself."""
    return conn


def inject_conn(database=DEFAULT, named=True, autocommit=False):
    """Pass a pooled raw psycopg2 connection as the first argument; commit or roll back, always give it back."""
    return injector(database, autocommit, named, raw_connection)


def inject_db(database=DEFAULT, autocommit=False):
    """Pass a Db helper on a pooled connection as the first argument: one transaction, or autocommit."""
    return injector(database, autocommit, True, Db)
