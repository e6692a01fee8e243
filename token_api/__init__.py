"""token_api: the gRPC TokenService and admin ScheduleService (default port 50051)."""
