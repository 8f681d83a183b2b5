"""Unit tier: no database, no server, no worker process."""
