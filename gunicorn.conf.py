"""gunicorn settings: workers, bind, timeouts. Pools are per process and made lazily after fork."""
import settings

bind = [settings.env_str('BIND', f'127.0.0.1:{settings.PORT}')]
workers = settings.WEB_CONCURRENCY
worker_class = 'sync'
# A request may run one statement up to the statement timeout; give it room before the worker is killed.
timeout = settings.DB_STATEMENT_TIMEOUT_MS // 1000 + 15
graceful_timeout = 30
keepalive = 5
accesslog = None
errorlog = '-'
loglevel = settings.LOG_LEVEL.lower()
proc_name = settings.PROCESS_ID
# Several replicas share a host in the native stack: gunicorn's control socket would collide.
control_socket_disable = True
