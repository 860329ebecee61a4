"""Alembic migrations of the update server (run with ``edgepkg-server migrate``)."""
