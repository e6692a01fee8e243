"""The benchmark's ceiling: a bare grpc.aio server that answers IssueToken with a fixed token.

Same request and response types and sizes as token_api, no interceptors, no database, no
Kafka. ``python -m tools.echo_server PORT [asyncio|uvloop]``: the issue's ceiling runs on the
standard library's loop (the default); the bench also measures one on uvloop, the loop the
services run on.
"""

from __future__ import annotations

import asyncio
import sys

import grpc
import uvloop

from waiting.v1 import token_pb2, token_service_pb2, token_service_pb2_grpc


class EchoTokenService(token_service_pb2_grpc.TokenServiceServicer):
    """IssueToken without doing anything."""

    def __init__(self) -> None:
        self._token = token_pb2.Token(
            token_id="x" * 32,
            user_id="bench-user-000000",
            schedule_id=1,
            status=token_pb2.TOKEN_STATUS_PENDING,
            position=1,
        )
        self._token.issued_at.GetCurrentTime()

    async def IssueToken(
        self, request: token_service_pb2.IssueTokenRequest, context: object
    ) -> token_service_pb2.IssueTokenResponse:
        return token_service_pb2.IssueTokenResponse(token=self._token)


async def serve(port: int) -> None:
    """Serve until killed."""
    server = grpc.aio.server()
    # Only IssueToken is served; the other methods keep the generated UNIMPLEMENTED answer.
    echo = EchoTokenService()  # type: ignore[abstract]
    token_service_pb2_grpc.add_TokenServiceServicer_to_server(echo, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    if sys.argv[2:] == ["uvloop"]:
        uvloop.run(serve(int(sys.argv[1])))
    else:
        asyncio.run(serve(int(sys.argv[1])))
