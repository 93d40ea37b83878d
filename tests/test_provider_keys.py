"""Tokens of an identity provider (RS256, ES256), checked with the keys it publishes as a JSON Web
Key Set, which these tests serve on loopback, rotating keys as a provider does."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from jobql.auth import InvalidToken, TokenVerifier
from jobql.provider_keys import ProviderKeys
from tests.conftest import SECRET_KEY, token
from tests.support import start_web

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

    from jobql.settings import Settings

ISSUER = "https://id.example.test/"
AUDIENCE = "jobql"


class SigningKey:
    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self.kid = f"{algorithm.lower()}-{uuid.uuid4().hex[:8]}"
        self.private: PrivateKeyTypes
        if algorithm == "RS256":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            public = jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            self.private = ec.generate_private_key(ec.SECP256R1())
            public = jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        self.jwk = {**public, "kid": self.kid, "use": "sig", "alg": algorithm}

    def token(self, user: str = "provider-user", ttl: int = 600, **claims: object) -> str:
        now = int(time.time())
        payload = {"sub": user, "scope": "", "iat": now, "exp": now + ttl, **claims}
        return jwt.encode(
            payload,
            self.private,  # type: ignore[arg-type]
            algorithm=self.algorithm,
            headers={"kid": self.kid},
        )


class JwksServer:
    """A provider's key set on loopback; `keys` may be swapped at any time (rotation)."""

    def __init__(self, keys: list[SigningKey]) -> None:
        self.keys = keys
        self.requests = 0
        self.delay = 0.0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                time.sleep(server.delay)
                body = json.dumps({"keys": [key.jwk for key in server.keys]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def rsa_key() -> SigningKey:
    return SigningKey("RS256")


@pytest.fixture
def jwks(rsa_key: SigningKey) -> Iterator[JwksServer]:
    server = JwksServer([rsa_key, SigningKey("ES256")])
    yield server
    server.close()


def verifier(jwks: JwksServer, min_interval: float = 30.0, **options: Any) -> TokenVerifier:
    options = {"issuer": ISSUER, "audience": AUDIENCE, **options}
    return TokenVerifier(SECRET_KEY, provider=ProviderKeys(jwks.url, min_interval), **options)


async def check(tokens: TokenVerifier, value: str) -> str:
    await tokens.prepare(f"Bearer {value}")
    return tokens.principal(f"Bearer {value}").user_id


async def test_rs256_and_es256_tokens_of_the_provider_are_accepted(jwks: JwksServer) -> None:
    tokens = verifier(jwks)
    for key in jwks.keys:
        value = key.token(f"user-{key.algorithm}", iss=ISSUER, aud=AUDIENCE)
        assert await check(tokens, value) == f"user-{key.algorithm}"
    assert await check(tokens, token("own-user")) == "own-user"  # jobql's own HS256 too
    assert jwks.requests == 1  # both keys came in one fetch


@pytest.mark.parametrize(
    "claims",
    [
        {"iss": "https://evil.example.test/", "aud": AUDIENCE},
        {"aud": AUDIENCE},
        {"iss": ISSUER, "aud": "another-api"},
        {"iss": ISSUER},
    ],
    ids=["wrong-issuer", "no-issuer", "wrong-audience", "no-audience"],
)
async def test_a_token_for_another_issuer_or_audience_is_refused(
    jwks: JwksServer, rsa_key: SigningKey, claims: dict[str, object]
) -> None:
    with pytest.raises(InvalidToken):
        await check(verifier(jwks), rsa_key.token("someone", 600, **claims))


async def test_a_key_of_another_type_than_the_tokens_algorithm_is_refused(
    jwks: JwksServer,
) -> None:
    es_key = jwks.keys[1]
    forged = SigningKey("RS256")
    value = jwt.encode(
        {"sub": "x", "exp": int(time.time()) + 60, "iss": ISSUER, "aud": AUDIENCE},
        forged.private,  # type: ignore[arg-type]
        algorithm="RS256",
        headers={"kid": es_key.kid},  # names the provider's EC key
    )
    with pytest.raises(InvalidToken, match="not signed by a key jobql knows"):
        await check(verifier(jwks), value)


async def test_keys_are_refreshed_when_the_provider_rotates_them(
    jwks: JwksServer, rsa_key: SigningKey
) -> None:
    tokens = verifier(jwks, min_interval=0.0)
    assert await check(tokens, rsa_key.token("before", iss=ISSUER, aud=AUDIENCE)) == "before"

    rotated = SigningKey("RS256")
    jwks.keys = [rotated]  # the old key is withdrawn, a new one published

    assert await check(tokens, rotated.token("after", iss=ISSUER, aud=AUDIENCE)) == "after"
    with pytest.raises(InvalidToken):
        await check(tokens, rsa_key.token("old-key", iss=ISSUER, aud=AUDIENCE))
    print(f"\nkey set fetched {jwks.requests} times over one rotation")
    assert jwks.requests >= 2


async def test_random_key_ids_do_not_make_a_fetch_each(
    jwks: JwksServer, rsa_key: SigningKey
) -> None:
    tokens = verifier(jwks)
    await check(tokens, rsa_key.token(iss=ISSUER, aud=AUDIENCE))
    attacker = SigningKey("RS256")

    async def random_kid() -> None:
        value = jwt.encode(
            {"sub": "x", "exp": int(time.time()) + 60},
            attacker.private,  # type: ignore[arg-type]
            algorithm="RS256",
            headers={"kid": uuid.uuid4().hex},
        )
        with pytest.raises(InvalidToken):
            await check(tokens, value)

    await asyncio.gather(*(random_kid() for _ in range(300)))

    print(f"\n300 tokens with random key ids: {jwks.requests} fetches of the key set in all")
    assert jwks.requests <= 2  # the first fetch, and at most one refresh in the interval


async def test_fetching_keys_does_not_block_the_event_loop(
    jwks: JwksServer, rsa_key: SigningKey
) -> None:
    jwks.delay = 0.5
    tokens = verifier(jwks)
    ticks = 0
    fetching = True

    async def ticker() -> None:
        nonlocal ticks
        while fetching:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    assert await check(tokens, rsa_key.token("slow", iss=ISSUER, aud=AUDIENCE)) == "slow"
    fetching = False
    await ticking
    print(f"\nthe event loop turned {ticks} times during a 0.5 s key fetch")
    assert ticks >= 10  # a blocking fetch would have allowed none


async def test_the_web_server_accepts_the_providers_tokens(
    jwks: JwksServer,
    rsa_key: SigningKey,
    make_settings: Callable[..., Settings],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    settings = make_settings(jwks_url=jwks.url, jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    web = start_web(settings, tmp_path_factory.mktemp("logs") / "web.log")
    try:
        query = {"query": '{ job(id: "x") { id } }'}
        async with httpx.AsyncClient() as client:
            for value, user in [(rsa_key.token(iss=ISSUER, aud=AUDIENCE), "provider"), (None, "")]:
                headers = {"Authorization": f"Bearer {value}"} if value else {}
                response = await client.post(web.http_url, json=query, headers=headers)
                if user:
                    assert response.json() == {"data": {"job": None}}
                else:
                    assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    finally:
        web.process.stop()


@pytest.mark.parametrize("document", [None, b"not json", b'{"keys": []}', b"[1, 2]"])
async def test_a_provider_that_is_down_or_serves_no_keys_refuses_its_tokens(
    rsa_key: SigningKey, document: bytes | None
) -> None:
    server = JwksServer([rsa_key])
    if document is None:
        server.close()  # nothing listens there any more
    else:
        server.keys = []
        server.http.RequestHandlerClass.do_GET = _serving(document)  # type: ignore[attr-defined]
    try:
        tokens = verifier(server, min_interval=0.0)
        await tokens.provider.refresh()  # type: ignore[union-attr]
        with pytest.raises(InvalidToken, match="not signed by a key jobql knows"):
            await check(tokens, rsa_key.token(iss=ISSUER, aud=AUDIENCE))
    finally:
        if document is not None:
            server.close()


def _serving(document: bytes) -> Callable[[BaseHTTPRequestHandler], None]:
    def do_get(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(document)))
        handler.end_headers()
        handler.wfile.write(document)

    return do_get
