"""The `fitserve` command: server, admin and user commands, one module per group."""

from app.cli.root import main
from app.cli.server import downgrade_database, upgrade_database

__all__ = ["downgrade_database", "main", "upgrade_database"]
