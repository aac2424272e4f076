"""Long-lived actors under the gateway's nursery: one per active tenant, one per provider, and their supervisor."""
