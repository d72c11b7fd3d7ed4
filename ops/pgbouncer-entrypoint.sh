#!/bin/sh
# Entrypoint of ops/pgbouncer.Dockerfile: fill pgbouncer.ini.template and the auth file from the
# environment and the password secret, then become pgbouncer (extra arguments are passed to it).
# The password is written only to the auth file, which only this user may read.
set -eu

: "${PGBOUNCER_TEMPLATE:=/etc/pgbouncer/dbapi.ini.template}"
: "${PGBOUNCER_RUN_DIR:=/tmp/pgbouncer}"
: "${PGBOUNCER_DB_HOST:=db}"
: "${PGBOUNCER_DB_PORT:=5432}"
: "${PGBOUNCER_DB_USER:=dbapi}"
: "${PGBOUNCER_DB_PASS_FILE:=/run/secrets/db_password}"
: "${PGBOUNCER_LISTEN_ADDR:=0.0.0.0}"
: "${PGBOUNCER_PORT:=6432}"
# The pool's defaults are ops/pgbouncer.py's pool_settings for compose's defaults (3 replicas x 3 workers x 2).
: "${PGBOUNCER_POOL_SIZE:=18}"
: "${PGBOUNCER_MAX_CLIENT_CONN:=136}"
: "${PGBOUNCER_QUERY_WAIT_TIMEOUT:=5}"
: "${PGBOUNCER_IDLE_TRANSACTION_TIMEOUT:=30}"
: "${DB_STATEMENT_TIMEOUT_MS:=30000}"
PGBOUNCER_AUTH_FILE="$PGBOUNCER_RUN_DIR/users.txt"
export PGBOUNCER_DB_HOST PGBOUNCER_DB_PORT PGBOUNCER_DB_USER PGBOUNCER_LISTEN_ADDR PGBOUNCER_PORT \
    PGBOUNCER_POOL_SIZE PGBOUNCER_MAX_CLIENT_CONN PGBOUNCER_QUERY_WAIT_TIMEOUT PGBOUNCER_IDLE_TRANSACTION_TIMEOUT \
    PGBOUNCER_AUTH_FILE DB_STATEMENT_TIMEOUT_MS

# pgbouncer's auth file doubles a double quote inside a quoted value.
quoted() {
    printf '"%s"' "$(printf '%s' "$1" | sed 's/"/""/g')"
}

umask 077
mkdir -p "$PGBOUNCER_RUN_DIR"
printf '%s %s\n' "$(quoted "$PGBOUNCER_DB_USER")" "$(quoted "$(cat "$PGBOUNCER_DB_PASS_FILE")")" > "$PGBOUNCER_AUTH_FILE"
envsubst '${PGBOUNCER_DB_HOST} ${PGBOUNCER_DB_PORT} ${PGBOUNCER_DB_USER} ${PGBOUNCER_LISTEN_ADDR} ${PGBOUNCER_PORT} ${PGBOUNCER_POOL_SIZE} ${PGBOUNCER_MAX_CLIENT_CONN} ${PGBOUNCER_QUERY_WAIT_TIMEOUT} ${PGBOUNCER_IDLE_TRANSACTION_TIMEOUT} ${PGBOUNCER_AUTH_FILE} ${DB_STATEMENT_TIMEOUT_MS}' \
    < "$PGBOUNCER_TEMPLATE" > "$PGBOUNCER_RUN_DIR/pgbouncer.ini"
exec pgbouncer "$@" "$PGBOUNCER_RUN_DIR/pgbouncer.ini"
