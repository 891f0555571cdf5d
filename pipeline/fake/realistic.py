"""Answers dressed as api.openai.com sends them (``FakeConfig.realistic``).

A benchmark against a fake that answers with three headers and a ten-word body measures
less than a client does against OpenAI. In realistic mode a chat completion carries:

* OpenAI's usual response headers: ``x-ratelimit-*`` (limit, remaining, reset of requests
  and tokens; the rate-limit feature's real ones win when it is on), ``x-request-id``,
  ``openai-processing-ms``, ``openai-version``, ``openai-organization``, ``openai-project``,
  ``access-control-expose-headers``, ``strict-transport-security``, ``cf-cache-status``,
  two ``set-cookie`` (``__cf_bm``, ``_cfuvid``), ``x-content-type-options``,
  ``server: cloudflare``, ``cf-ray``, ``alt-svc``, and the ``date`` and ``content-type``
  every answer has;
* a body with every field OpenAI sends: ``refusal`` and ``annotations`` in each message,
  ``audio_tokens`` and the prediction counts in the usage details, ``service_tier`` and a
  ``system_fingerprint`` of OpenAI's shape;
* contents of 100 to 300 tokens (``content.generate_prose``).

The plausible limits are a high-volume account's, high enough that a client following
them is not slowed on one machine (``PLAUSIBLE_REQUESTS_PER_MINUTE``): what they cost a
client is parsing them, as against OpenAI. Header values that vary per answer come from
``random.Random(f"{fault_seed}:realistic")``, so they are reproducible.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from typing import Any

PLAUSIBLE_REQUESTS_PER_MINUTE = 200_000
PLAUSIBLE_TOKENS_PER_MINUTE = 150_000_000
SYSTEM_FINGERPRINT = "fp_b376dfbbd5"
ORGANIZATION = "user-fake0realistic0org0000"
PROJECT = "proj_Fake0Realistic0Project00"
_COOKIE_S = 1800
_COLOS = ("AMS", "FRA", "LHR", "CDG", "IAD", "SJC", "ORD", "NRT")
_URLSAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
_FIXED = {
    "openai-version": "2020-10-01",
    "openai-organization": ORGANIZATION,
    "openai-project": PROJECT,
    "access-control-expose-headers": "X-Request-ID",
    "strict-transport-security": "max-age=31536000; includeSubDomains; preload",
    "cf-cache-status": "DYNAMIC",
    "x-content-type-options": "nosniff",
    "server": "cloudflare",
    "alt-svc": 'h3=":443"; ma=86400',
}


def _duration(seconds: float) -> str:
    """A reset time as OpenAI writes it: "6ms", "1.5s", "0s"."""
    ms = max(0, math.ceil(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    return f"{ms / 1000:.3f}".rstrip("0").rstrip(".") + "s"


class OpenAIHeaders:
    """The headers of one answer after another, as api.openai.com sends them."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(f"{seed}:realistic")

    def _token(self, length: int) -> str:
        return "".join(self._rng.choices(_URLSAFE, k=length))

    def headers(self, cost_tokens: int, processing_ms: float) -> dict[str, str]:
        """Single-valued headers of an answer to a request charged ``cost_tokens``
        (prompt plus ``max_tokens``) that took ``processing_ms`` to produce."""
        rng = self._rng
        processing = max(1, round(processing_ms)) + rng.randint(5, 60)
        requests, tokens = PLAUSIBLE_REQUESTS_PER_MINUTE, PLAUSIBLE_TOKENS_PER_MINUTE
        return {
            "x-ratelimit-limit-requests": str(requests),
            "x-ratelimit-limit-tokens": str(tokens),
            "x-ratelimit-remaining-requests": str(requests - 1),
            "x-ratelimit-remaining-tokens": str(max(0, tokens - cost_tokens)),
            "x-ratelimit-reset-requests": _duration(60 / requests),
            "x-ratelimit-reset-tokens": _duration(60 * cost_tokens / tokens),
            "x-request-id": f"req_{rng.getrandbits(128):032x}",
            "openai-processing-ms": str(processing),
            "x-envoy-upstream-service-time": str(processing + rng.randint(1, 9)),
            **_FIXED,
            "cf-ray": f"{rng.getrandbits(64):016x}-{rng.choice(_COLOS)}",
        }

    def cookies(self, now: float | None = None) -> list[tuple[str, str]]:
        """The two ``set-cookie`` headers Cloudflare adds (``__cf_bm``, ``_cfuvid``)."""
        now = time.time() if now is None else now
        stamp = int(now)
        expires = email.utils.formatdate(now + _COOKIE_S, usegmt=True)
        expires = expires[:7] + "-" + expires[8:11] + "-" + expires[14:]  # "Tue, 30-Nov-26 ..."
        tail = "domain=.api.openai.com; HttpOnly; Secure; SameSite=None"
        bm = f"{self._token(43)}-{stamp}-1.0.1.1-{self._token(86)}"
        uv = f"{self._token(40)}-{stamp}{self._rng.randint(0, 999):03d}-0.0.1.1-604800000"
        return [
            ("set-cookie", f"__cf_bm={bm}; path=/; expires={expires}; {tail}"),
            ("set-cookie", f"_cfuvid={uv}; path=/; {tail}"),
        ]


def dress(answer: dict[str, Any]) -> dict[str, Any]:
    """A ``chat.completion`` with every field OpenAI sends, in OpenAI's order."""
    for choice in answer["choices"]:
        choice["message"] |= {"refusal": None, "annotations": []}
    usage = answer["usage"]
    usage["prompt_tokens_details"] = {
        "cached_tokens": usage["prompt_tokens_details"]["cached_tokens"],
        "audio_tokens": 0,
    }
    usage["completion_tokens_details"] = {
        "reasoning_tokens": usage["completion_tokens_details"]["reasoning_tokens"],
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    }
    return {
        "id": answer["id"],
        "object": answer["object"],
        "created": answer["created"],
        "model": answer["model"],
        "choices": answer["choices"],
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
