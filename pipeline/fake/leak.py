"""A hostile endpoint's answers (``leak_key``): the request's credential echoed back.

Every string an answer carries (``id``, ``model``, ``system_fingerprint``, each choice's
content, tool call ids, names and arguments) gets the key whole and
in OpenAI's masked form (the first 8 and last 4 characters around asterisks, as its
"Incorrect API key provided" message shows it), so a test can check that the client
stores and logs none of it.
"""

from __future__ import annotations

from typing import Any


def masked(key: str) -> str:
    """OpenAI's masked form of a key: ``sk-proj-********abcd``."""
    return f"{key[:8]}{'*' * max(len(key) - 12, 4)}{key[-4:]}"


def leak_message(message: str, key: str) -> str:
    """An error message that names the key, whole and masked ("" key: unchanged)."""
    if not key:
        return message
    return f"{message} Incorrect API key provided: {masked(key)} (you sent {key})."


def _spoil(text: str, key: str) -> str:
    return f"{text} [{key}|{masked(key)}]"


def leak_credential(answer: dict[str, Any], key: str) -> dict[str, Any]:
    """``answer`` (a ``chat.completion`` object) with ``key`` in each of its strings."""
    if not key:
        return answer
    leaked = dict(answer)
    for name in ("id", "model", "system_fingerprint"):
        leaked[name] = _spoil(str(answer.get(name)), key)
    choices = []
    for choice in answer["choices"]:
        message = dict(choice["message"])
        if isinstance(message.get("content"), str):
            message["content"] = _spoil(message["content"], key)
        calls = message.get("tool_calls")
        if calls:
            message["tool_calls"] = [
                {
                    **call,
                    "id": _spoil(call["id"], key),
                    "function": {
                        "name": _spoil(call["function"]["name"], key),
                        "arguments": _spoil(call["function"]["arguments"], key),
                    },
                }
                for call in calls
            ]
        choices.append({**choice, "message": message})
    leaked["choices"] = choices
    return leaked
