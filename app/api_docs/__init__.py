"""Self-hosted interactive API docs: Swagger UI at /docs and ReDoc at /redoc, no CDN."""
