"""The HTTP edge: the Quart-Trio app, the admin API, the server and its connection handling, tracing headers."""
