"""activator: admits waiting tokens from Kafka events and serves QueueStatusService (port 50052)."""
