"""Transport adapters, one module per protocol, found by URL scheme through entry points."""
