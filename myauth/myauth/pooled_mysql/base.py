"""The gevent worker's database engine (settings/local.py, database.py): django-db-connection-pool's
MySQL backend, without the set-up Django repeats each time it takes a connection.

Django prepares every connection it opens: it reads the server's version and settings, then sets
the session's isolation level, and keeps what it read on its connection object. Under gevent that
object lives for one task (one greenlet), so with a pool every task made those two round trips on
a connection that had been prepared already. Here a connection is prepared once, when the pool
opens it, and what Django read of the server is kept once per process.
"""

from dj_db_conn_pool.backends.mysql import base
from django.utils.functional import cached_property

PREPARED = "myauth_prepared"  # set in the pooled connection's own info dict, which outlives checkouts
_server_data = {}  # database alias -> what Django read of the server (Django's mysql_server_data)


class DatabaseWrapper(base.DatabaseWrapper):
    def init_connection_state(self):
        info = self.connection.info  # SQLAlchemy's, for the life of the connection to MariaDB
        if not info.get(PREPARED):
            super().init_connection_state()
            info[PREPARED] = True

    @cached_property
    def mysql_server_data(self):
        if self.alias not in _server_data:
            _server_data[self.alias] = super().mysql_server_data
        return _server_data[self.alias]
