"""The peer of issue 11: users/get and the bench's slow action on FastAPI + pydantic + asyncpg, under uvicorn with
uvloop and httptools, written the way FastAPI's documentation writes such a service.

It keeps the gateway's contract for these two actions: a bearer token looked up by its SHA-256 digest (401 without
a known one), the body validated with unknown keys refused (422), the same SQL (modules/users/sql.py and the slow
module's, with asyncpg's numbered parameters), 404 for a missing user, and the same bulkhead: a client holds at most
its "max_connections" of a worker's pool (429 at once), and a borrower that finds no free connection within
DB_POOL_TIMEOUT_MS gets a 503. Tokens come from BEARER and BEARER_TOKENS, in the gateway's format; each worker
opens its own asyncpg pool of DB_POOL_MAX connections to DATABASE_URL (the environment bench/servers.py sets).
"""
import hashlib
import itertools
import json
import os
import re
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

import asyncpg
from psycopg2.extensions import parse_dsn
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from bench.modules.slow import sql as slow_sql
from bench.modules.slow.schemas import MAX_SECONDS
from modules.users import sql as users_sql

BIGINT_MAX = 2 ** 63 - 1
POOL_MAX = int(os.environ.get('DB_POOL_MAX', '2'))
POOL_TIMEOUT_S = int(os.environ.get('DB_POOL_TIMEOUT_MS', '5000')) / 1000
RETRY_LATER = {'Retry-After': '1'}
PLACEHOLDER = re.compile(r'%\((\w+)\)s')


def numbered(query):
    """Return a psycopg2 query with asyncpg's $1, $2... in place of its %(name)s placeholders, in their order (each
    name used once, as in the queries served here)."""
    numbers = itertools.count(1)
    return PLACEHOLDER.sub(lambda match: f'${next(numbers)}', query)


USER_BY_ID = numbered(users_sql.USER_BY_ID)
SLEEP = numbered(slow_sql.SLEEP)


@dataclass(frozen=True)
class Client:
    """A caller known by its token: its name and how many of a pool's connections it may hold at once."""

    name: str
    max_connections: int


def sha256_hex(token):
    """Return the hex SHA-256 digest of token."""
    return hashlib.sha256(token.encode()).hexdigest()


def load_clients():
    """Build {token digest: Client} from BEARER (client "bearer") and BEARER_TOKENS (the gateway's JSON format)."""
    clients = {sha256_hex(os.environ['BEARER']): Client('bearer', POOL_MAX)}
    for name, entry in json.loads(os.environ.get('BEARER_TOKENS') or '{}').items():
        clients[sha256_hex(entry['token'])] = Client(name, entry.get('max_connections', POOL_MAX))
    return clients


CLIENTS = load_clients()
bearer = HTTPBearer(auto_error=False)


def authorized_client(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]):
    """Return the caller's Client, or answer 401."""
    client = credentials and CLIENTS.get(sha256_hex(credentials.credentials))
    if not client:
        raise HTTPException(401, 'A known bearer token is required.', {'WWW-Authenticate': 'Bearer'})
    return client


def connect_arguments(dsn):
    """Return asyncpg's keyword arguments for a libpq DSN, a URL or key=value pairs (the bench's embedded server
    has the latter, with a socket directory as its host)."""
    arguments = parse_dsn(dsn)
    arguments['database'] = arguments.pop('dbname')
    return arguments


@asynccontextmanager
async def lifespan(app):
    """Open this worker's pool for the lifespan of the app, with the per-client connection counts."""
    async with asyncpg.create_pool(min_size=0, max_size=POOL_MAX, server_settings={'application_name': 'bench-peer'},
                                   **connect_arguments(os.environ['DATABASE_URL'])) as pool:
        yield {'pool': pool, 'held': Counter()}


@asynccontextmanager
async def bulkhead(held, client):
    """Count a connection against client from before its borrow to its return: 429 at once when the client holds
    its limit already. As in the gateway, a limit of the pool's size or more limits nothing."""
    if client.max_connections >= POOL_MAX:
        yield
        return
    if held[client.name] >= client.max_connections:
        raise HTTPException(429, 'This client holds as many database connections as it may.', RETRY_LATER)
    held[client.name] += 1
    try:
        yield
    finally:
        held[client.name] -= 1


@asynccontextmanager
async def borrowed(request, client):
    """Lend a pooled connection to client within its bulkhead; 503 when none is free within the pool timeout."""
    async with bulkhead(request.state.held, client):
        try:
            conn = await request.state.pool.acquire(timeout=POOL_TIMEOUT_S)
        except TimeoutError:
            raise HTTPException(503, 'No database connection is free.', RETRY_LATER) from None
        try:
            yield conn
        finally:
            await request.state.pool.release(conn)


class Strict(BaseModel):
    """A request body: unknown keys and coerced types are refused."""

    model_config = ConfigDict(extra='forbid', strict=True)


class UserId(Strict):
    """One user by id."""

    id: int = Field(ge=1, le=BIGINT_MAX)


class Sleep(Strict):
    """How long to hold the connection (an integer is a number too)."""

    seconds: float = Field(ge=0, le=MAX_SECONDS)


class User(BaseModel):
    """A user as users/get returns it."""

    id: int
    email: str
    name: str
    created_at: datetime
    updated_at: datetime


app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
Caller = Annotated[Client, Depends(authorized_client)]


@app.get('/healthz')
async def healthz():
    """Answer while the process serves; touches no database."""
    return {'status': 'ok'}


@app.post('/users/get', response_model=User)
async def get_user(body: UserId, client: Caller, request: Request):
    """Return one user, or 404."""
    async with borrowed(request, client) as conn:
        row = await conn.fetchrow(USER_BY_ID, body.id)
    if row is None:
        raise HTTPException(404, f'No user has id {body.id}.')
    return dict(row)


@app.post('/slow/sleep')
async def sleep(body: Sleep, client: Caller, request: Request):
    """Hold a pooled connection in pg_sleep for the body's seconds."""
    async with borrowed(request, client) as conn:
        await conn.execute(SLEEP, body.seconds)
    return {'slept': body.seconds}
