"""The waiting room's shared kernel: domain rules, token storage, Kafka events and gRPC plumbing.

Both services (``token_api`` and ``activator``) work on the same tokens table, so the model,
the SQL and the event codec live here once.
"""
