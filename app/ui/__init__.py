"""The web dashboard: server-rendered pages over the services, live parts through htmx and SSE."""
