"""queuekit: background jobs and messaging, one small interface over many real brokers."""
