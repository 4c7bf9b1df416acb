"""JWT bearer tokens beside API keys, verified with PyJWT: HS256 secrets, RS256 / ES256 public keys, issuer,
audience, expiry, leeway; scopes from a claim; a bad token is 401 with the reason."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from prediction_service.settings import SecuritySettings, Settings
from tests.support.asgi import served_app

SECRET = "a-long-test-secret-of-at-least-32-bytes!"
PREDICT = "/v1/models/tiny-regressor/predict"
ROW = {"instance": [1.0, 2.0, 3.0, 4.0]}


def token(key=SECRET, algorithm="HS256", **claims) -> str:
    now = int(time.time())
    body = {"sub": "strategy-7", "iss": "desk-idp", "aud": "prediction-service", "exp": now + 300, "iat": now,
            "scope": "read", **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=algorithm)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture
def jwt_settings(tiny_store) -> Settings:
    return Settings(model_store=tiny_store, security=SecuritySettings(
        api_keys="admin-secret", predict_requires_key=True, jwt_secret=SECRET, jwt_issuer="desk-idp",
        jwt_audience="prediction-service", jwt_leeway_seconds=5))


async def test_a_valid_token_predicts_beside_api_keys(jwt_settings):
    async with served_app(jwt_settings) as (_, http):
        assert (await http.post(PREDICT, json=ROW, headers=bearer(token()))).status_code == 200
        assert (await http.post(PREDICT, json=ROW, headers={"X-API-Key": "admin-secret"})).status_code == 200
        missing = await http.post(PREDICT, json=ROW)
        assert missing.status_code == 401 and "Bearer" in missing.json()["error"]["message"]


@pytest.mark.parametrize("claims, reason", [
    ({"exp": int(time.time()) - 60}, "expired"),
    ({"aud": "another-service"}, "audience"),
    ({"iss": "someone-else"}, "issuer"),
    ({"exp": None}, "'exp'"),
])
async def test_a_bad_token_is_401_with_its_reason(jwt_settings, claims, reason):
    async with served_app(jwt_settings) as (_, http):
        answer = await http.post(PREDICT, json=ROW, headers=bearer(token(**claims)))
        assert answer.status_code == 401 and reason in answer.json()["error"]["message"], answer.text
        assert SECRET not in answer.text


async def test_a_forged_or_malformed_token_is_401(jwt_settings):
    async with served_app(jwt_settings) as (_, http):
        forged = await http.post(PREDICT, json=ROW, headers=bearer(token(key="x" * 40)))
        assert forged.status_code == 401 and "does not verify" in forged.json()["error"]["message"]
        garbage = await http.post(PREDICT, json=ROW, headers=bearer("not.a.token"))
        assert garbage.status_code == 401 and "malformed" in garbage.json()["error"]["message"]
        unsigned = jwt.encode({"sub": "x", "exp": int(time.time()) + 60, "scope": "admin"}, None, algorithm="none")
        assert (await http.post(PREDICT, json=ROW, headers=bearer(unsigned))).status_code == 401


async def test_scopes_come_from_the_claim(jwt_settings):
    async with served_app(jwt_settings) as (_, http):
        reload = "/v1/models/tiny-regressor/reload"
        assert (await http.post(reload, headers=bearer(token(scope="read")))).status_code == 403
        assert (await http.post(reload, headers=bearer(token(scope=["read", "admin"])))).status_code == 200
        none = await http.post(PREDICT, json=ROW, headers=bearer(token(scope="trading")))
        assert none.status_code == 403 and "no scope" in none.json()["error"]["message"]


@pytest.mark.parametrize("kind", ["RS256", "ES256"])
async def test_public_key_tokens(tiny_store, tmp_path, kind):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "RS256" \
        else ec.generate_private_key(ec.SECP256R1())
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "idp.pem").write_bytes(public_pem)
    settings = Settings(model_store=tiny_store, security=SecuritySettings(
        predict_requires_key=True, jwt_public_keys=str(tmp_path / "idp.pem"), jwt_issuer="desk-idp",
        jwt_audience="prediction-service"))
    async with served_app(settings) as (_, http):
        signed = token(key=private, algorithm=kind)
        assert (await http.post(PREDICT, json=ROW, headers=bearer(signed))).status_code == 200
        # the public key passed off as an HMAC secret (algorithm confusion) does not verify
        confused = await http.post(PREDICT, json=ROW, headers=bearer(token(key=SECRET, algorithm="HS256")))
        assert confused.status_code == 401


async def test_without_jwt_settings_a_bearer_token_is_refused(tiny_store):
    settings = Settings(model_store=tiny_store, security=SecuritySettings(api_keys="k1", predict_requires_key=True))
    async with served_app(settings) as (_, http):
        refused = await http.post(PREDICT, json=ROW, headers=bearer(token()))
        assert refused.status_code == 401 and "not accepted" in refused.json()["error"]["message"]


def test_a_bearer_token_in_grpc_metadata(tiny_store_template, tmp_path):
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from tests.grpc.conftest import serve_grpc

    server = serve_grpc(tiny_store_template, tmp_path, env={"PREDICT_REQUIRES_KEY": "true", "JWT_SECRET": SECRET,
                                                            "JWT_AUDIENCE": "prediction-service"})
    client = server.client()
    try:
        x = grpcclient.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), np.float32))
        answer = client.infer("tiny-regressor", [x], headers={"authorization": f"Bearer {token()}"})
        assert answer.as_numpy("y").shape[0] == 1
        with pytest.raises(InferenceServerException) as expired:
            client.infer("tiny-regressor", [x], headers={"authorization": f"Bearer {token(exp=1)}"})
        assert expired.value.status() == "StatusCode.UNAUTHENTICATED" and "expired" in expired.value.message()
    finally:
        client.close()
        server.process.stop()
