"""Benchmark inputs of realistic size: product reviews of 200 to 400 words.

Each review is built deterministically from a fixed word list (no randomness at run time
beyond a seeded generator, so every sitting and every checkout sends the same prompts):
a pool of sentences is drawn once from ``random.Random(SEED)``, and review ``i`` strings
sentences of the pool together, from a start and with a stride that depend on ``i``,
until it has its word count (``200 + i * 7919 % 201``). The fake server counts such a
review as about 1.1 tokens a word: prompts of 250 to 450 tokens.
"""

from __future__ import annotations

import random
from functools import cache

SEED = 20261130
WORDS_MIN, WORDS_MAX = 200, 400
_POOL = 1009  # a prime: every stride below it visits the whole pool
_WORDS = (
    "I", "we", "it", "this", "the", "a", "my", "our", "its", "they", "you", "one",
    "blender", "kettle", "vacuum", "lamp", "charger", "headset", "backpack", "mattress",
    "speaker", "camera", "drill", "monitor", "keyboard", "mixer", "toaster", "heater",
    "battery", "cable", "lid", "handle", "motor", "button", "screen", "strap", "box", "manual",
    "bought", "ordered", "returned", "used", "tried", "cleaned", "charged", "assembled",
    "works", "broke", "stopped", "arrived", "feels", "looks", "sounds", "lasts", "heats",
    "is", "was", "seems", "became", "stays", "needs", "has", "had", "gets", "keeps",
    "great", "terrible", "quiet", "loud", "sturdy", "flimsy", "cheap", "pricey", "solid",
    "fast", "slow", "easy", "awkward", "comfortable", "heavy", "light", "bright", "dim",
    "excellent", "decent", "disappointing", "reliable", "noisy", "smooth", "sharp", "warm",
    "after", "before", "during", "within", "since", "until", "about", "over", "under",
    "days", "weeks", "months", "hours", "minutes", "year", "morning", "evening", "week",
    "and", "but", "so", "because", "although", "while", "then", "also", "still", "even",
    "very", "quite", "really", "too", "not", "never", "always", "mostly", "barely", "almost",
    "price", "quality", "delivery", "support", "warranty", "design", "setup", "value",
    "recommend", "expected", "hoped", "wanted", "liked", "loved", "hated", "missed",
    "kitchen", "office", "car", "bedroom", "garden", "trip", "family", "kids", "dog",
)  # fmt: skip
_ENDS = (".", ".", ".", "!", "?")


@cache
def _sentences() -> tuple[tuple[str, int], ...]:
    """The pool: (sentence, its word count)."""
    rng = random.Random(SEED)
    pool = []
    for _ in range(_POOL):
        words = rng.choices(_WORDS, k=rng.randint(6, 22))
        if len(words) > 10:
            words[rng.randint(3, len(words) - 4)] += ","
        text = " ".join(words)
        pool.append((text[0].upper() + text[1:] + rng.choice(_ENDS), len(words)))
    return tuple(pool)


def review(i: int) -> str:
    """Review number ``i``: ``200 + i * 7919 % 201`` words or a sentence more."""
    pool = _sentences()
    target = WORDS_MIN + i * 7919 % (WORDS_MAX - WORDS_MIN + 1)
    at, stride = i * 31 % _POOL, 1 + i % 13
    parts, words = [], 0
    while words < target:
        sentence, count = pool[at]
        parts.append(sentence)
        words += count
        at = (at + stride) % _POOL
    return " ".join(parts)
