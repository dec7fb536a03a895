"""Store adapters: in-memory (embedded default) and Redis."""
