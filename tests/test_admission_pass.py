"""Admission passes: minted at admission, returned by every read, verified offline by
TokenGate with the published JWK Set, and refused in every way a forger or a stale holder
could try (the security list of the admission-pass issue)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import jwt
import pytest
from aiokafka import ConsumerRecord
from cryptography.hazmat.primitives import serialization
from google.protobuf.message import DecodeError

from tests.helpers import (
    GUARDED,
    RPC_TIMEOUT,
    System,
    admitted,
    configure,
    downstream_behind,
    eventually,
    issue,
    read_topic,
    token_status,
    wait_counts,
)
from waiting.v1 import (
    events_pb2,
    queue_status_service_pb2,
    token_pb2,
    token_service_pb2,
)
from waiting_client import (
    SCHEDULE_HEADER,
    GrpcJwks,
    KeySet,
    PassVerifier,
    Revocations,
    TokenGate,
)
from waiting_core import passes, repository

Call = Callable[[str, int], Awaitable[grpc.StatusCode]]


class ForgerJwks:
    """A JWK Set source that serves the real keys plus one the test holds the private key
    of, so that passes with bad claims can carry a good signature."""

    def __init__(self, real: GrpcJwks, extra: dict[str, Any]) -> None:
        self._real = real
        self._extra = extra

    async def fetch(self) -> str:
        document = json.loads(await self._real.fetch())
        return json.dumps({"keys": [*document["keys"], self._extra]})


@contextlib.asynccontextmanager
async def gated(verifier: PassVerifier) -> AsyncIterator[Call]:
    """A downstream server behind an offline TokenGate; yields a call function."""
    async with downstream_behind(TokenGate(None, [GUARDED], verifier=verifier)) as stub:

        async def call(admission_pass: str, schedule: int) -> grpc.StatusCode:
            metadata = (
                ("authorization", f"Bearer {admission_pass}"),
                (SCHEDULE_HEADER, str(schedule)),
            )
            try:
                await stub.GetToken(
                    token_service_pb2.GetTokenRequest(), metadata=metadata, timeout=10
                )
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        yield call


@pytest.fixture
async def forger_key() -> passes.NewKey:
    return passes.generate_key("ES256")


@pytest.fixture
async def gate(system: System, forger_key: passes.NewKey) -> AsyncIterator[Call]:
    async with grpc.aio.insecure_channel(system.token_api_address) as waiting_room:
        source = ForgerJwks(GrpcJwks(waiting_room), forger_key.public_jwk)
        verifier = PassVerifier(KeySet(source), leeway_seconds=0)
        async with gated(verifier) as call:
            yield call


def _event_of(record: ConsumerRecord[bytes, bytes], token_id: str) -> bool:
    event = events_pb2.TokenStateChangedEvent()
    try:
        event.ParseFromString(record.value or b"")
    except DecodeError:
        return False
    return event.token_id == token_id and event.to_status == token_pb2.TOKEN_STATUS_COMPLETED


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64_json(value: dict[str, Any]) -> str:
    return _b64(json.dumps(value).encode())


def _claims(token: token_pb2.Token, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": "waiting-room",
        "aud": "seat-service",
        "sub": token.user_id,
        "jti": token.token_id,
        "sch": token.schedule_id,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }
    return {**claims, **changes}


def _forge(key: passes.NewKey, claims: dict[str, Any], kid: str | None = None) -> str:
    private = passes.load_private_key(key.private_pem)
    return jwt.encode(claims, private, algorithm="ES256", headers={"kid": kid or key.kid})


async def test_an_admitted_token_carries_one_pass_that_every_read_returns(
    system: System, schedule_id: int
) -> None:
    await configure(system, schedule_id, capacity=1)
    holder = await admitted(system, "holder", schedule_id)
    waiter = await issue(system, "waiter", schedule_id)

    assert holder.admission_pass
    assert waiter.admission_pass == ""
    assert (await token_status(system, waiter.token_id)).admission_pass == ""
    got = await system.tokens.GetToken(
        token_service_pb2.GetTokenRequest(token_id=holder.token_id), timeout=RPC_TIMEOUT
    )
    validated = await system.tokens.ValidateToken(
        token_service_pb2.ValidateTokenRequest(token_id=holder.token_id, schedule_id=schedule_id),
        timeout=RPC_TIMEOUT,
    )
    assert got.token.admission_pass == validated.token.admission_pass == holder.admission_pass

    keys = json.loads(
        (
            await system.tokens.GetSigningKeys(
                token_service_pb2.GetSigningKeysRequest(), timeout=RPC_TIMEOUT
            )
        ).jwks_json
    )
    header = jwt.get_unverified_header(holder.admission_pass)
    assert header["alg"] == "ES256"
    (jwk,) = [k for k in keys["keys"] if k["kid"] == header["kid"]]
    assert set(jwk) == {"kty", "crv", "x", "y", "kid", "alg", "use"}  # no private "d"
    claims = jwt.decode(
        holder.admission_pass,
        jwt.PyJWK(jwk).key,
        algorithms=["ES256"],
        audience="seat-service",
        issuer="waiting-room",
    )
    assert claims["sub"] == "holder"
    assert claims["jti"] == holder.token_id
    assert claims["sch"] == schedule_id
    assert claims["exp"] == holder.expires_at.seconds
    assert claims["iat"] == claims["nbf"] == holder.activated_at.seconds


async def test_a_big_admission_gives_every_token_its_own_pass(
    system: System, schedule_id: int
) -> None:
    # More than MINT_CHUNK at once: on PostgreSQL, minted and stored chunk by chunk.
    count = 2 * repository.MINT_CHUNK + 50
    await configure(system, schedule_id, capacity=1)
    tokens = await asyncio.gather(*(issue(system, f"u{i}", schedule_id) for i in range(count)))
    await wait_counts(system, schedule_id, active=1, pending=count - 1)

    await configure(system, schedule_id, capacity=count)
    await wait_counts(system, schedule_id, active=count, pending=0)

    keys = json.loads(
        (
            await system.tokens.GetSigningKeys(
                token_service_pb2.GetSigningKeysRequest(), timeout=RPC_TIMEOUT
            )
        ).jwks_json
    )
    verifying = {k["kid"]: jwt.PyJWK(k).key for k in keys["keys"]}
    for token in tokens:
        status = await token_status(system, token.token_id)
        kid = jwt.get_unverified_header(status.admission_pass)["kid"]
        claims = jwt.decode(
            status.admission_pass,
            verifying[kid],
            algorithms=["ES256"],
            audience="seat-service",
            issuer="waiting-room",
        )
        assert (claims["jti"], claims["sub"]) == (token.token_id, token.user_id)
        assert claims["exp"] == status.expires_at.seconds


async def test_a_watch_gets_the_pass_at_admission(system: System, schedule_id: int) -> None:
    await configure(system, schedule_id, capacity=1)
    holder = await admitted(system, "holder", schedule_id)
    waiter = await issue(system, "waiter", schedule_id)
    stream = system.queue.WatchToken(
        queue_status_service_pb2.WatchTokenRequest(token_id=waiter.token_id), timeout=RPC_TIMEOUT
    )
    views = []
    async for reply in stream:
        views.append(reply.token)
        if len(views) == 1:  # the first view is the current one: PENDING
            await system.tokens.CompleteToken(
                token_service_pb2.CompleteTokenRequest(token_id=holder.token_id),
                timeout=RPC_TIMEOUT,
            )
        if reply.token.status == token_pb2.TOKEN_STATUS_ACTIVE:
            break
    stream.cancel()

    assert all(v.admission_pass == "" for v in views[:-1])
    assert views[-1].admission_pass
    assert views[-1].admission_pass == (await token_status(system, waiter.token_id)).admission_pass


async def test_the_gate_admits_a_good_pass_with_no_call_per_request(
    system: System, gate: Call, schedule_id: int
) -> None:
    holder = await admitted(system, "holder", schedule_id)
    assert await gate(holder.admission_pass, schedule_id) == grpc.StatusCode.OK
    assert await gate(holder.admission_pass, schedule_id) == grpc.StatusCode.OK


async def test_another_schedules_pass_is_permission_denied(
    system: System, gate: Call, schedule_id: int
) -> None:
    holder = await admitted(system, "holder", schedule_id)
    assert await gate(holder.admission_pass, schedule_id + 1) == grpc.StatusCode.PERMISSION_DENIED


async def test_forged_and_broken_passes_are_unauthenticated(
    system: System, gate: Call, forger_key: passes.NewKey, schedule_id: int
) -> None:
    holder = await admitted(system, "holder", schedule_id)
    good = holder.admission_pass
    header, payload, signature = good.split(".")
    real_kid = jwt.get_unverified_header(good)["kid"]
    now = int(time.time())
    real_jwk = json.loads(
        (
            await system.tokens.GetSigningKeys(
                token_service_pb2.GetSigningKeysRequest(), timeout=RPC_TIMEOUT
            )
        ).jwks_json
    )["keys"]
    public_pem = jwt.PyJWK(next(k for k in real_jwk if k["kid"] == real_kid)).key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    confusion_head = _b64_json({"alg": "HS256", "typ": "JWT", "kid": real_kid})
    confusion_body = _b64_json(_claims(holder))
    confusion_mac = hmac.new(
        public_pem, f"{confusion_head}.{confusion_body}".encode(), hashlib.sha256
    ).digest()
    flipped = signature[:-4] + ("AAAA" if signature[-4:] != "AAAA" else "BBBB")
    other_claims = _b64_json(_claims(holder, sch=schedule_id, sub="someone-else"))

    cases = {
        "alg none": f"{_b64_json({'alg': 'none', 'kid': real_kid})}.{_b64_json(_claims(holder))}.",
        "alg none, no signature part": f"{_b64_json({'alg': 'none'})}.{payload}",
        "HS256 with the public key as secret": (
            f"{confusion_head}.{confusion_body}.{_b64(confusion_mac)}"
        ),
        "expired": _forge(forger_key, _claims(holder, iat=now - 700, nbf=now - 700, exp=now - 100)),
        "future nbf": _forge(forger_key, _claims(holder, nbf=now + 300)),
        "wrong aud": _forge(forger_key, _claims(holder, aud="another-service")),
        "wrong iss": _forge(forger_key, _claims(holder, iss="someone")),
        "sch as a string": _forge(forger_key, _claims(holder, sch=str(schedule_id))),
        "no exp": _forge(forger_key, {k: v for k, v in _claims(holder).items() if k != "exp"}),
        "tampered payload": f"{header}.{other_claims}.{signature}",
        "tampered signature": f"{header}.{payload}.{flipped}",
        "unknown kid": _forge(forger_key, _claims(holder), kid="no-such-key"),
        "truncated": good[: len(good) // 2],
        "garbage": "not a pass at all",
        "three dots of garbage": "a.b.c",
        "empty parts": "..",
    }
    codes = {name: await gate(value, schedule_id) for name, value in cases.items()}
    assert codes == dict.fromkeys(cases, grpc.StatusCode.UNAUTHENTICATED)
    # The forger's key itself is good: a pass with proper claims goes through, so each
    # refusal above is for the reason its name gives.
    assert await gate(_forge(forger_key, _claims(holder)), schedule_id) == grpc.StatusCode.OK


async def test_a_gate_with_no_keys_fails_closed() -> None:
    class Down:
        async def fetch(self) -> str:
            raise OSError("unreachable")

    verifier = PassVerifier(KeySet(Down()))
    key = passes.generate_key("ES256")
    forged = _forge(key, _claims(token_pb2.Token(user_id="u", token_id="t", schedule_id=1)))
    async with gated(verifier) as call:
        assert await call(forged, 1) == grpc.StatusCode.UNAVAILABLE
        assert await call("garbage", 1) == grpc.StatusCode.UNAUTHENTICATED


async def test_revocation_mode_refuses_a_pass_given_up_early(
    system: System, schedule_id: int, kafka_bootstrap: str
) -> None:
    holder = await admitted(system, "holder", schedule_id)
    done = await admitted(system, "done-before-the-gate-started", schedule_id)
    await system.tokens.CompleteToken(
        token_service_pb2.CompleteTokenRequest(token_id=done.token_id), timeout=RPC_TIMEOUT
    )
    events = system.token_api_settings.events_topic
    async with grpc.aio.insecure_channel(system.token_api_address) as waiting_room:
        revocations = Revocations(kafka_bootstrap, events, lookback_seconds=3600)
        strict = PassVerifier(KeySet(GrpcJwks(waiting_room)), revocations=revocations)
        lenient = PassVerifier(KeySet(GrpcJwks(waiting_room)))

        await read_topic(  # the completion is on the topic before the gate starts
            events,
            kafka_bootstrap,
            lambda record: record.key if _event_of(record, done.token_id) else None,
            lambda found: bool(found),
        )
        await strict.start()
        try:
            assert revocations.revoked(done.token_id)  # learnt while catching up
            async with gated(strict) as strict_call, gated(lenient) as lenient_call:
                assert await strict_call(holder.admission_pass, schedule_id) == grpc.StatusCode.OK
                assert (
                    await strict_call(done.admission_pass, schedule_id)
                    == grpc.StatusCode.UNAUTHENTICATED
                )
                # Without revocation the pass opens doors until its exp (documented).
                assert await lenient_call(done.admission_pass, schedule_id) == grpc.StatusCode.OK

                await system.tokens.CancelToken(
                    token_service_pb2.CancelTokenRequest(token_id=holder.token_id),
                    timeout=RPC_TIMEOUT,
                )

                async def holder_refused() -> bool:
                    code = await strict_call(holder.admission_pass, schedule_id)
                    return code == grpc.StatusCode.UNAUTHENTICATED

                await eventually(holder_refused)
        finally:
            await strict.stop()
