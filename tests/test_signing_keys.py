"""Signing keys: the JWK Set over HTTP and gRPC, rotation with no gap, a key directory, and a
Go program that verifies a pass with nothing but the JWKS URL (golang-jwt + keyfunc).

These tests run on a system of their own (a fresh database, HTTP ports on), so that the
keys and the passes they see are theirs alone."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import shutil
import stat
import subprocess
import threading
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest

from tests.conftest import IN_CI
from tests.helpers import (
    RPC_TIMEOUT,
    System,
    admitted,
    configure,
    eventually,
    running_system,
    settings_for,
)
from tools.system import free_port
from waiting.v1 import (
    schedule_service_pb2,
    schedule_service_pb2_grpc,
    token_pb2,
    token_service_pb2,
)
from waiting_client import HttpJwks, KeySet, PassRejected, PassVerifier
from waiting_core import passes, repository
from waiting_core.clock import utc_now
from waiting_core.database import Database
from waiting_core.http_port import JWKS_PATH
from waiting_core.signing_keys import KeyConfig, SigningKeys

GO_VERIFIER = Path(__file__).parent / "interop" / "verify_pass"
PREPUBLISH = 1.0


@dataclasses.dataclass
class KeyedSystem:
    system: System
    jwks_url: str
    activator_jwks_url: str


@pytest.fixture(scope="module")
async def keyed(
    fresh_database: Callable[[], str], kafka_bootstrap: str
) -> AsyncIterator[KeyedSystem]:
    token_settings, activator_settings = settings_for(
        await asyncio.to_thread(fresh_database), kafka_bootstrap
    )
    token_settings = dataclasses.replace(
        token_settings,
        metrics_port=free_port(),
        signing_key_prepublish_seconds=PREPUBLISH,
        jwks_max_age_seconds=1,
    )
    activator_settings = dataclasses.replace(
        activator_settings,
        metrics_port=free_port(),
        signing_key_prepublish_seconds=PREPUBLISH,
        jwks_max_age_seconds=1,
    )
    async with running_system(token_settings, activator_settings) as system:
        yield KeyedSystem(
            system,
            f"http://127.0.0.1:{token_settings.metrics_port}{JWKS_PATH}",
            f"http://127.0.0.1:{activator_settings.metrics_port}{JWKS_PATH}",
        )


async def _get(url: str) -> tuple[dict[str, Any], dict[str, str]]:
    def get() -> tuple[dict[str, Any], dict[str, str]]:
        with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 - a test URL
            return json.loads(reply.read()), dict(reply.headers)

    return await asyncio.to_thread(get)


async def _kids(url: str) -> set[str]:
    return {key["kid"] for key in (await _get(url))[0]["keys"]}


async def _rotate(system: System) -> schedule_service_pb2.RotateSigningKeyResponse:
    return await system.schedules.RotateSigningKey(
        schedule_service_pb2.RotateSigningKeyRequest(), timeout=RPC_TIMEOUT
    )


async def _pass_signed_by(
    system: System, schedule_id: int, kid: str, prefix: str
) -> token_pb2.Token:
    """Admit users until one's pass is signed by ``kid`` (a rotated-in key signs after
    PREPUBLISH seconds, and activators read keys once a second)."""
    for user in range(200):
        token = await admitted(system, f"{prefix}-{user}", schedule_id)
        if _kid(token.admission_pass) == kid:
            return token
        await asyncio.sleep(0.1)
    pytest.fail(f"no pass signed by {kid}")


def _kid(admission_pass: str) -> str:
    return str(jwt.get_unverified_header(admission_pass)["kid"])


async def test_both_services_publish_the_same_public_jwks(
    keyed: KeyedSystem, schedule_id: int
) -> None:
    holder = await admitted(keyed.system, "holder", schedule_id)
    document, headers = await _get(keyed.jwks_url)
    from_activator, _ = await _get(keyed.activator_jwks_url)
    over_grpc = await keyed.system.tokens.GetSigningKeys(
        token_service_pb2.GetSigningKeysRequest(), timeout=RPC_TIMEOUT
    )

    assert headers["Content-Type"] == "application/jwk-set+json"
    assert headers["Cache-Control"] == "public, max-age=1"
    assert document == from_activator == json.loads(over_grpc.jwks_json)
    assert _kid(holder.admission_pass) in {key["kid"] for key in document["keys"]}
    for key in document["keys"]:
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)  # public halves only
        assert key["use"] == "sig"
        assert key["alg"] in passes.ALGORITHMS


async def test_rotation_keeps_old_passes_verifiable_until_they_expire(
    keyed: KeyedSystem, new_schedule_id: Callable[[], int]
) -> None:
    system = keyed.system
    schedule_id = new_schedule_id()
    await configure(system, schedule_id, active_ttl_seconds=3)
    # A key of this test's own: it signs only passes of 3 s (earlier tests' keys signed
    # passes of 600 s, and stay published for that long).
    old_kid = (await _rotate(system)).kid
    before = await _pass_signed_by(system, schedule_id, old_kid, "before")
    gate = PassVerifier(KeySet(HttpJwks(keyed.jwks_url), min_refresh_seconds=0.2))
    await gate.start()  # caches the JWK Set as it is before the rotation

    rotated = await _rotate(system)
    assert rotated.kid != old_kid
    assert rotated.algorithm == "ES256"
    assert {old_kid, rotated.kid} <= await _kids(keyed.jwks_url)  # published before it signs
    after = await _pass_signed_by(system, schedule_id, rotated.kid, "after")

    # Both verify, at a gate that learnt its keys before the rotation and with a new one.
    fresh = PassVerifier(KeySet(HttpJwks(keyed.jwks_url)))
    for verifier in (gate, fresh):
        assert (
            await verifier.verify(before.admission_pass, schedule_id)
        ).token_id == before.token_id
        assert (await verifier.verify(after.admission_pass, schedule_id)).token_id == after.token_id

    # Once every pass the old key signed has expired, it leaves the JWK Set.
    async def old_key_gone() -> bool:
        return old_kid not in await _kids(keyed.jwks_url)

    assert old_kid in await _kids(keyed.jwks_url)
    await eventually(old_key_gone, timeout=30)
    passes_until = max(before.expires_at.ToDatetime(), after.expires_at.ToDatetime())
    assert utc_now().replace(tzinfo=None) >= passes_until - timedelta(seconds=1)
    assert rotated.kid in await _kids(keyed.jwks_url)
    with pytest.raises(PassRejected):
        await fresh.verify(before.admission_pass, schedule_id)


async def test_a_key_stays_published_past_every_pass_it_signed(
    keyed: KeyedSystem, new_schedule_id: Callable[[], int]
) -> None:
    """Each admission keeps its key's ``passes_until`` past its pass's expiry, writing it
    ahead by at most KEEP_PUBLISHED_MARGIN (and not at every settle)."""
    system = keyed.system
    schedule_id = new_schedule_id()
    # Passes longer than any earlier test's: this test's admissions must extend the key.
    await configure(system, schedule_id, active_ttl_seconds=3_600)
    kid = (await _rotate(system)).kid
    signed = [await _pass_signed_by(system, schedule_id, kid, "first")]
    signed += [await admitted(system, f"later-{i}", schedule_id) for i in range(3)]
    last_exp = max(
        t.expires_at.ToDatetime(tzinfo=UTC) for t in signed if _kid(t.admission_pass) == kid
    )

    async with system.activator.database.transaction(read_only=True) as session:
        (row,) = [r for r in await repository.signing_keys(session) if r.kid == kid]

    assert row.passes_until is not None
    assert last_exp <= row.passes_until <= last_exp + repository.KEEP_PUBLISHED_MARGIN


def _go() -> str | None:
    found = shutil.which("go")
    if found is None and IN_CI:
        pytest.fail("Go is needed for the interoperability test (CI=true)", pytrace=False)
    return found


@pytest.fixture(scope="module")
def go_verifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Go verifier, built once (its modules come from the Go proxy)."""
    go = _go()
    if go is None:
        pytest.skip("Go is not installed")
    binary = tmp_path_factory.mktemp("go") / "verify_pass"
    subprocess.run([go, "build", "-o", str(binary), "."], cwd=GO_VERIFIER, check=True, timeout=600)
    return binary


def _verify_in_go(
    binary: Path, jwks_url: str, admission_pass: str, schedule_id: int
) -> dict[str, Any]:
    result = subprocess.run(
        [str(binary), "-jwks", jwks_url, "-pass", admission_pass, "-schedule", str(schedule_id)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    claims: dict[str, Any] = json.loads(result.stdout)
    return claims


async def test_a_go_backend_verifies_a_pass_from_the_jwks_url_alone(
    keyed: KeyedSystem, go_verifier: Path, schedule_id: int
) -> None:
    holder = await admitted(keyed.system, "go-user", schedule_id)
    claims = await asyncio.to_thread(
        _verify_in_go, go_verifier, keyed.jwks_url, holder.admission_pass, schedule_id
    )
    assert claims["sub"] == "go-user"
    assert claims["jti"] == holder.token_id
    assert claims["sch"] == schedule_id
    assert claims["iss"] == "waiting-room"
    assert claims["aud"] == ["seat-service"]
    assert claims["exp"] == holder.expires_at.seconds
    tampered = holder.admission_pass[:-6] + (
        "AAAAAA" if not holder.admission_pass.endswith("AAAAAA") else "BBBBBB"
    )
    refused = await asyncio.to_thread(
        subprocess.run,
        [
            str(go_verifier),
            "-jwks",
            keyed.jwks_url,
            "-pass",
            tampered,
            "-schedule",
            str(schedule_id),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1


@pytest.fixture
def static_jwks() -> Iterator[Callable[[str], str]]:
    """Serves a JWK Set document over HTTP; returns its URL."""
    served: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = served["document"]
            self.send_response(200)
            self.send_header("Content-Type", "application/jwk-set+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def serve(document: str) -> str:
        served["document"] = document.encode()
        return f"http://127.0.0.1:{server.server_port}{JWKS_PATH}"

    yield serve
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("algorithm", ["EdDSA", "RS256"])
def test_the_other_algorithms_verify_in_go_too(
    algorithm: str, go_verifier: Path, static_jwks: Callable[[str], str]
) -> None:
    key = passes.generate_key(algorithm)
    now = utc_now()
    claims = passes.pass_claims(
        passes.PassSettings(algorithm), "tok", "user", 7, now, now + timedelta(seconds=60)
    )
    admission_pass = passes.mint(
        claims, passes.load_private_key(key.private_pem), key.kid, algorithm
    )
    url = static_jwks(
        passes.jwks_json([passes.KeyRecord(key.kid, algorithm, key.public_jwk, now, None)])
    )
    assert jwt.get_unverified_header(admission_pass)["alg"] == algorithm
    assert _verify_in_go(go_verifier, url, admission_pass, 7)["jti"] == "tok"


def test_a_pass_is_the_jws_pyjwt_makes() -> None:
    # EdDSA signatures are deterministic, so the lean mint's bytes can be compared whole.
    key = passes.generate_key("EdDSA")
    private = passes.load_private_key(key.private_pem)
    now = utc_now()
    claims = passes.pass_claims(
        passes.PassSettings("EdDSA"), "tok", "user", 7, now, now + timedelta(seconds=60)
    )
    expected = jwt.encode(claims, private, algorithm="EdDSA", headers={"kid": key.kid})
    assert passes.mint(claims, private, key.kid, "EdDSA") == expected


async def test_a_key_directory_keeps_private_keys_out_of_the_database(
    fresh_database: Callable[[], str], tmp_path: Path
) -> None:
    key_dir = tmp_path / "keys"
    async with Database(await asyncio.to_thread(fresh_database)) as database:
        keys = SigningKeys(database, KeyConfig(key_dir=str(key_dir), prepublish_seconds=0))
        document = json.loads(await keys.jwks())
        (kid,) = [key["kid"] for key in document["keys"]]
        pem = key_dir / f"{kid}.pem"
        assert stat.S_IMODE(os.stat(pem).st_mode) == 0o600
        async with database.transaction() as session:
            (row,) = await repository.signing_keys(session)
            assert row.private_pem is None
            signer = await keys.signer(session)
        assert signer.kid == kid
        rotated = await keys.rotate()
        assert (key_dir / f"{rotated.kid}.pem").exists()
        async with database.transaction() as session:
            keys_after = SigningKeys(
                database, KeyConfig(key_dir=str(key_dir), prepublish_seconds=0)
            )
            assert (await keys_after.signer(session)).kid == rotated.kid


async def test_rotation_needs_the_admin_credential(keyed: KeyedSystem) -> None:
    address = keyed.system.token_api_address
    async with grpc.aio.insecure_channel(address) as channel:
        stub = schedule_service_pb2_grpc.ScheduleServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.RotateSigningKey(
                schedule_service_pb2.RotateSigningKeyRequest(), timeout=RPC_TIMEOUT
            )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_private_keys_never_reach_a_log_line(
    keyed: KeyedSystem, caplog: pytest.LogCaptureFixture, schedule_id: int
) -> None:
    caplog.set_level(logging.DEBUG)
    await _rotate(keyed.system)
    await admitted(keyed.system, "logged", schedule_id)
    database = keyed.system.token_api.database
    async with database.transaction(read_only=True) as session:
        pems = [row.private_pem for row in await repository.signing_keys(session)]
    assert "PRIVATE KEY" not in caplog.text
    for pem in pems:
        assert pem is not None
        body = b"".join(pem.splitlines()[1:-1]).decode()
        assert body[:40] not in caplog.text
