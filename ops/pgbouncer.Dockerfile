# pgbouncer for dbapi (compose profile "pgbouncer"): Debian's package, the same version and the same
# template (pgbouncer.ini.template) as `make stack STACK_PGBOUNCER=1` runs natively.
# Build context: ops/.
FROM debian:12.11-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends pgbouncer=1.18.0-1+deb12u1 gettext-base=0.21-12 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10002 --user-group --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin pgbouncer
COPY pgbouncer.ini.template /etc/pgbouncer/dbapi.ini.template
COPY --chmod=0755 pgbouncer-entrypoint.sh /usr/local/bin/pgbouncer-entrypoint
# pgbouncer refuses to run as root.
USER 10002:10002
EXPOSE 6432
# SIGINT is pgbouncer's safe shutdown: transactions in flight finish first.
STOPSIGNAL SIGINT
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${PGBOUNCER_PORT:-6432}"]
ENTRYPOINT ["/usr/local/bin/pgbouncer-entrypoint"]
