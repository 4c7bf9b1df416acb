"""HTTP client for TorchServe's inference and management APIs, with token auth and error translation.

One aiohttp ClientSession (created inside the running loop) is reused for every call. Transport
failures and TorchServe statuses become domain errors here, at the edge, with ``raise ... from``:
timeouts -> BackendTimeout, connection errors and 5xx -> BackendUnavailable, 503 -> Overloaded,
404 -> ModelNotFound.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any, Literal

import aiohttp

from ..errors import BackendTimeout, BackendUnavailable, Conflict, InvalidInput, ModelNotFound, Overloaded
from ..settings import TorchServeSettings

logger = logging.getLogger(__name__)

Api = Literal["inference", "management"]


class TorchServeTokens:
    """Bearer tokens for both APIs: fixed ones from settings, or TorchServe's key file (re-readable,
    because a restarted TorchServe writes new keys)."""

    def __init__(self, settings: TorchServeSettings):
        self._key_file: Path | None = settings.key_file
        self._keys: dict[str, str | None] = {
            "inference": settings.token,
            "management": settings.management_token or settings.token,
        }
        if self._key_file is not None and self._key_file.is_file():
            self.refresh()

    def header(self, api: Api) -> dict[str, str]:
        key = self._keys.get(api)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def refresh(self) -> bool:
        """Re-read the key file; True when it yielded keys different from the ones in use."""
        if self._key_file is None:
            return False
        try:
            keys = read_key_file(self._key_file)
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("cannot read TorchServe key file %s: %s", self._key_file, exc)
            return False
        changed = keys != self._keys
        self._keys = dict(keys)
        return changed


def _auth_rejected(status: int, body: bytes) -> bool:
    return status in (400, 401) and b"InvalidKeyException" in body


def _message(body: bytes) -> str:
    try:
        document = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(document, dict):
        return str(document.get("message") or document.get("error") or document)[:500]
    return str(document)[:500]


class TorchServeClient:
    def __init__(self, settings: TorchServeSettings):
        self.settings = settings
        self.inference_url = settings.inference_url.rstrip("/")
        self.management_url = settings.management_url.rstrip("/")
        self.tokens = TorchServeTokens(settings)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # limit=0: concurrency is bounded by the service's own in-flight limit, not the pool.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        api: Api,
        path: str,
        *,
        what: str,
        timeout: float,
        params: dict[str, Any] | None = None,
        data: bytes | None = None,
    ) -> tuple[int, bytes]:
        """One call; a rejected token is re-read from the key file and the call retried once."""
        base = self.inference_url if api == "inference" else self.management_url
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in range(2):
            try:
                async with self._client().request(
                    method, f"{base}{path}", params=params, data=data,
                    headers={**headers, **self.tokens.header(api)},
                    timeout=aiohttp.ClientTimeout(total=timeout),
                ) as response:
                    status, body = response.status, await response.read()
            except (asyncio.TimeoutError, TimeoutError) as exc:
                raise BackendTimeout(f"TorchServe did not answer {what} within {timeout:.3g}s",
                                     {"backend": "torchserve", "timeout_s": timeout}) from exc
            except aiohttp.ClientError as exc:
                raise BackendUnavailable(f"cannot reach TorchServe at {base} for {what}: {exc}",
                                         {"backend": "torchserve", "url": base}) from exc
            if _auth_rejected(status, body) and attempt == 0 and self.tokens.refresh():
                logger.info("TorchServe rejected the token; retrying with keys re-read from the key file")
                continue
            return status, body
        return status, body

    async def checked(self, method: str, api: Api, path: str, *, what: str, timeout: float,
                      params: dict[str, Any] | None = None, data: bytes | None = None) -> bytes:
        status, body = await self.request(method, api, path, what=what, timeout=timeout, params=params, data=data)
        raise_for_status(status, body, what)
        return body

    async def alive(self) -> tuple[bool, str]:
        """Whether TorchServe answers, asked through the management API's model list.

        Not /ping: TorchServe 0.12 never answers a /ping that arrives while a model is being
        unregistered, and none at all once an unregistration failed half-way (a
        ConcurrentModificationException leaves an empty model entry behind, and every /ping then dies
        on a NullPointerException). Both were seen here, the second in CI. The model list skips such
        entries.
        """
        try:
            status, body = await self.request("GET", "management", "/models", what="health check",
                                              params={"limit": "1"}, timeout=self.settings.health_timeout_seconds)
        except (BackendUnavailable, BackendTimeout) as exc:
            return False, exc.message
        if status != 200:
            return False, f"the management API answered {status}: {_message(body)}"
        return True, "TorchServe answers"


def raise_for_status(status: int, body: bytes, what: str) -> None:
    if 200 <= status < 300:
        return
    message = _message(body)
    details = {"backend": "torchserve", "status": status, "backend_message": message}
    if _auth_rejected(status, body):
        raise BackendUnavailable(
            f"TorchServe rejected the access token for {what}; set TORCHSERVE_KEY_FILE (or TORCHSERVE_TOKEN)",
            details)
    if status == 404:
        raise ModelNotFound(f"TorchServe does not know the model for {what}: {message}", details)
    if status == 409:
        raise Conflict(f"TorchServe refused {what}: {message}", details)
    if status in (400, 413, 422):
        raise InvalidInput(f"TorchServe rejected {what}: {message}", details)
    if status in (408, 504):
        raise BackendTimeout(f"TorchServe timed out on {what}: {message}", details)
    if status == 503:
        # TorchServe answers 503 when the model's job queue is full (or it has no worker yet).
        raise Overloaded(f"TorchServe is overloaded for {what}: {message}", details)
    raise BackendUnavailable(f"TorchServe answered {status} to {what}: {message}", details)


def read_key_file(path: Path) -> dict[str, str]:
    """TorchServe's key_file.json -> ``{"inference": key, "management": key}``."""
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    return {"inference": document["inference"]["key"], "management": document["management"]["key"]}
