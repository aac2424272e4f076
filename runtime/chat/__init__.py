"""The chat use case: one request's story from admission to settlement — router, record, relay, exchange."""
