"""The cluster tests use the real redis-server of ``tests/conftest.py`` (``redis``: an empty
server, ``redis_session``: the one server of the session)."""
