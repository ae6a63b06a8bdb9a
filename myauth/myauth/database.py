"""The gevent worker's database connections: one pool per worker process, shared by its
greenlets. Django keeps a connection per thread, which under gevent is per greenlet, and
Celery's Django fixup closes it around every task, so without a pool each task opened a new
TLS connection to MariaDB. With django-db-connection-pool (SQLAlchemy's QueuePool) that close
puts the connection back into the pool instead. settings/local.py selects the engine for the
gevent worker only; web, beat and the prefork worker keep Django's own.
"""

from environment import DATABASE_POOL_OVERFLOW  # the worker's own connection, outside any task

SERVER_STATUS_IN_TRANS = 1  # MySQL protocol's status flag (PyMySQL's constants.SERVER_STATUS)
POOL_ENGINE = "myauth.pooled_mysql"  # django-db-connection-pool's, each connection prepared once


def pooled() -> bool:
    from django.conf import settings

    return settings.DATABASES["default"]["ENGINE"] == POOL_ENGINE


def size_pool(sender, **kwargs) -> None:
    """worker_init, once the worker's concurrency is known: a connection for each greenlet, so a
    task never waits for one, and no more (the bound scripts/check-sizing counts against
    MariaDB's max_connections). The pool pings a connection before handing it out, so one that
    MariaDB closed (a restart) is replaced, not used."""
    if not pooled():
        return
    import dj_db_conn_pool
    from dj_db_conn_pool.core import pool_container
    from django.db import connections
    from sqlalchemy import event, pool

    dj_db_conn_pool.setup(pool_size=sender.concurrency, max_overflow=DATABASE_POOL_OVERFLOW, pre_ping=True)
    # SQLAlchemy rolls back every connection returned to the pool: a round trip after every task,
    # though Django's autocommit leaves no transaction open. Roll back only one that has one.
    pool_container.pool_default_params["reset_on_return"] = None
    if not event.contains(pool.QueuePool, "reset", rollback_open_transaction):
        event.listen(pool.QueuePool, "reset", rollback_open_transaction)
    # Celery ran Django's system checks before this, and one of Alliance Auth's asks MariaDB for
    # its version: that made the pool already, with the library's defaults (10 connections and 10
    # more). Close it; the next connection makes one of this size.
    connections.close_all()
    close_pool()


def rollback_open_transaction(dbapi_connection, connection_record, reset_state) -> None:
    """The pool's reset of a returned connection: a rollback only if a transaction may be open:
    the connection is not in autocommit mode (Django turns it off for a transaction, and back on
    after it), or the server said a transaction is open (a START TRANSACTION). PyMySQL keeps the
    server's status only from replies without rows: after one with rows (Django's INSERT ...
    RETURNING on MariaDB, inside a transaction a task left open) it is stale, the mode is not."""
    if reset_state.transaction_was_reset:
        return
    if not dbapi_connection.autocommit_mode or (dbapi_connection.server_status or 0) & SERVER_STATUS_IN_TRANS:
        dbapi_connection.rollback()


def close_pool(**kwargs) -> None:
    """worker_shutdown: close the pooled connections, so MariaDB does not count them as aborted,
    and forget the pool."""
    if not pooled():
        return
    from dj_db_conn_pool.core import pool_container

    pool_container.dispose()
    pool_container.clear()
