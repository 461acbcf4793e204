"""Any OpenAI-compatible Chat Completions endpoint through the official ``openai`` SDK."""

from __future__ import annotations

import os

import httpx
import openai

from ..errors import ConfigError
from .base import ChatRequest, ChatResult, PermanentError, TransientError


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
        if api_key is None:
            local = any(h in base_url for h in ("127.0.0.1", "localhost", "[::1]", "0.0.0.0"))
            if not local and api_key_env == "OPENAI_API_KEY" and "openai.com" in base_url:
                raise ConfigError(f"set ${api_key_env} (or name another variable with "
                                  "--api-key-env) to call this endpoint")
            api_key = "none"  # local servers usually take any key
        self.name = base_url
        self.context_length = context_length
        self.client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout,
            http_client=_http_client(max_connections, timeout))

    def count_tokens(self, text: str) -> int:
        return len(text) // 4 + 1  # no tokenizer for a remote model: ~4 characters a token

    async def complete(self, request: ChatRequest, *, timeout: float | None = None) -> ChatResult:
        body: dict = {"model": request.model, "messages": [dict(m) for m in request.messages],
                      "temperature": request.temperature, "top_p": request.top_p,
                      "max_tokens": request.max_tokens}
        if request.stop:
            body["stop"] = list(request.stop)
        try:
            # the SDK's own request path (auth, errors, transport) with a plain dict in and
            # out: its typed params/models cost ~2.5 ms CPU per call, more than all the rest
            resp = await self.client.post("/chat/completions", body=body, cast_to=dict,
                                          options={"timeout": timeout} if timeout else {})
        except openai.RateLimitError as e:
            raise TransientError("rate_limited", _short(e), _retry_after(e.response)) from None
        except openai.InternalServerError as e:
            raise TransientError(f"http_{e.status_code}", _short(e),
                                 _retry_after(e.response)) from None
        except openai.APITimeoutError:
            raise TransientError("timeout", "the request timed out") from None
        except openai.APIConnectionError as e:
            raise TransientError("connection", _short(e)) from None
        except openai.APIResponseValidationError as e:
            raise TransientError("bad_response", _short(e)) from None
        except openai.BadRequestError as e:
            text = _short(e).lower()
            if "context" in text and ("length" in text or "window" in text or "maximum" in text):
                raise PermanentError("context_length", _short(e)) from None
            raise PermanentError("bad_request", _short(e)) from None
        except openai.AuthenticationError:
            raise PermanentError("auth", "the endpoint refused the API key") from None
        except openai.APIStatusError as e:
            if e.status_code in (408, 409, 425) or e.status_code >= 500:
                raise TransientError(f"http_{e.status_code}", _short(e),
                                     _retry_after(e.response)) from None
            raise PermanentError(f"http_{e.status_code}", _short(e)) from None
        except ValueError as e:  # body that is not JSON at all
            raise TransientError("bad_response", str(e)[:200]) from None
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


def _short(e: Exception) -> str:
    return str(e).replace("\n", " ")[:300]
