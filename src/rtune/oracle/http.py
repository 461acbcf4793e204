"""Any OpenAI-compatible Chat Completions endpoint through the official ``openai`` SDK."""

from __future__ import annotations

import errno
import os

import httpx
import openai

from ..errors import ConfigError
from ..redact import redact
from .base import (
    ChatRequest,
    ChatResult,
    ConnectionRefused,
    FatalError,
    PermanentError,
    TransientError,
)
from .guided_http import GuidedEndpoint


def _retry_after(response: httpx.Response | None) -> float | None:
    if response is None:
        return None
    value = response.headers.get("retry-after-ms")
    if value:
        try:
            return float(value) / 1000
        except ValueError:
            pass
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class HttpBackend:
    """OpenAI, vLLM, Ollama, llama.cpp server, TGI: anything speaking /v1/chat/completions."""

    def __init__(self, base_url: str, *, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 120.0, context_length: int | None = None,
                 max_connections: int = 256):
        api_key = os.environ.get(api_key_env)
        self.api_key_env = api_key_env
        self._key_set = api_key is not None
        if api_key is None:
            local = any(h in base_url for h in ("127.0.0.1", "localhost", "[::1]", "0.0.0.0"))
            if not local and api_key_env == "OPENAI_API_KEY" and "openai.com" in base_url:
                raise ConfigError(f"set ${api_key_env} (or name another variable with "
                                  "--api-key-env) to call this endpoint")
            api_key = "none"  # local servers usually take any key
        self._secrets = (api_key,) if self._key_set else ()
        self.name = base_url
        self.context_length = context_length
        self.client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout,
            http_client=_http_client(max_connections, timeout))
        self.guided = GuidedEndpoint(base_url)  # which guided fields this server takes

    def count_tokens(self, text: str) -> int:
        return len(text) // 4 + 1  # no tokenizer for a remote model: ~4 characters a token

    async def complete(self, request: ChatRequest, *, timeout: float | None = None) -> ChatResult:
        body: dict = {"model": request.model, "messages": [dict(m) for m in request.messages],
                      "temperature": request.temperature, "top_p": request.top_p,
                      "max_tokens": request.max_tokens}
        if request.stop:
            body["stop"] = list(request.stop)
        if request.guided is not None:
            return await self.guided.complete(self, request, body, timeout)
        return self._result(await self.post(body, timeout), request)

    async def post(self, body: dict, timeout: float | None) -> object:
        """One POST of ``body`` to /chat/completions; errors as rtune's."""
        try:
            # the SDK's own request path (auth, errors, transport) with a plain dict in and
            # out: its typed params/models cost ~2.5 ms CPU per call, more than all the rest
            return await self.client.post("/chat/completions", body=body,
                                          cast_to=dict[str, object],
                                          options={"timeout": timeout} if timeout else {})
        except (openai.OpenAIError, ValueError) as e:
            raise self._error(e) from None

    def _error(self, e: Exception) -> Exception:
        """The rtune error for an SDK exception; its text redacted for the key in use."""
        short = self._short(e)
        if isinstance(e, (openai.AuthenticationError, openai.PermissionDeniedError)):
            return FatalError("auth", self._auth_message(e.status_code))
        if isinstance(e, openai.RateLimitError):
            return TransientError("rate_limited", short, _retry_after(e.response))
        if isinstance(e, openai.APIConnectionError):
            return _connection_error(e, self.name)
        if isinstance(e, openai.APIResponseValidationError):
            return TransientError("bad_response", short)
        if isinstance(e, openai.BadRequestError):
            text = short.lower()
            if "context" in text and ("length" in text or "window" in text or "maximum" in text):
                return PermanentError("context_length", short)
            return PermanentError("bad_request", short)
        if isinstance(e, openai.APIStatusError):
            if e.status_code in (408, 409, 425) or e.status_code >= 500:
                return TransientError(f"http_{e.status_code}", short, _retry_after(e.response))
            return PermanentError(f"http_{e.status_code}", short)
        return TransientError("bad_response", short[:200])  # a body that is not JSON at all

    def _auth_message(self, status: int) -> str:
        where = (f"${self.api_key_env}" if self._key_set
                 else f"no key (${self.api_key_env} is not set)")
        return (f"{self.name} refused the API key (HTTP {status}; sent {where}): set the right "
                "key, or name its variable with --api-key-env")

    def _short(self, e: Exception) -> str:
        """Server text enters rtune here: redacted before it is cut, logged or stored."""
        return redact(str(e).replace("\n", " "), self._secrets)[:300]

    def _result(self, resp: object, request: ChatRequest) -> ChatResult:
        if not isinstance(resp, dict):
            raise TransientError("bad_response", "reply is not a JSON object")
        choices = resp.get("choices")
        first = choices[0] if isinstance(choices, list) and choices else None
        message = first.get("message") if isinstance(first, dict) else None
        if not isinstance(message, dict):
            raise TransientError("bad_response", "reply without choices[0].message")
        text = message.get("content") or ""
        if not isinstance(text, str):
            raise TransientError("bad_response", "choices[0].message.content is not text")
        usage = resp.get("usage") if isinstance(resp.get("usage"), dict) else {}
        tokens_in = usage.get("prompt_tokens")
        tokens_out = usage.get("completion_tokens")
        if not isinstance(tokens_in, int):
            tokens_in = self.count_tokens("".join(m["content"] for m in request.messages))
        if not isinstance(tokens_out, int):
            tokens_out = self.count_tokens(text)
        return ChatResult(text=text, tokens_in=tokens_in, tokens_out=tokens_out,
                          finish_reason=first.get("finish_reason"),
                          model=resp.get("model") or request.model)

    async def aclose(self) -> None:
        await self.client.close()


def _http_client(max_connections: int, timeout: float):
    """The SDK's aiohttp transport where installed (``openai[aiohttp]``): about a third of the
    client CPU per call of the default httpx pool at high concurrency; else plain httpx."""
    aio = getattr(openai, "DefaultAioHttpClient", None)
    if aio is not None:
        try:
            from openai._base_client import DEFAULT_CONNECTION_LIMITS

            limits = type(DEFAULT_CONNECTION_LIMITS)(
                max_connections=max_connections, max_keepalive_connections=max_connections)
            return aio(limits=limits, timeout=timeout)
        except (ImportError, RuntimeError, TypeError):  # extra missing, or another SDK layout
            pass
    limits = httpx.Limits(max_connections=max_connections,
                          max_keepalive_connections=max_connections)
    return httpx.AsyncClient(limits=limits, timeout=timeout)


def _connection_error(e: openai.APIConnectionError, url: str) -> TransientError:
    """Name what happened from the OS error under the SDK's: its aiohttp transport reports
    every failed connect (refused, DNS) as a connect *timeout*, httpx as a connection error."""
    chain = _chain(e)
    if any(getattr(c, "errno", None) == errno.ECONNREFUSED for c in chain):
        return ConnectionRefused(f"nothing listens at {url}")
    cause = next((c for c in chain if isinstance(c, OSError)), None)
    if isinstance(e, openai.APITimeoutError) and (cause is None or isinstance(cause, TimeoutError)):
        return TransientError("timeout", "the request timed out")
    return TransientError("connection", f"{type(cause or e).__name__}: {cause or e}"[:300])


def _chain(e: BaseException) -> list[BaseException]:
    """``e`` and the exceptions it was raised from, outermost first."""
    chain: list[BaseException] = []
    cause: BaseException | None = e
    while cause is not None and all(cause is not c for c in chain):
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    return chain
