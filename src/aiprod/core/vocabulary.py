"""Warnings for prompt words a model cannot read (torch-free: the tokenizer's JSON only).

The built-in model's tokenizer is word-level, built from its training captions
(``aiprod.builtin.grammar.vocabulary``): any other word reaches the model as ``<unk>`` and
changes nothing. ``prompt_warnings`` names those words, so the job (and ``aiprod generate``)
says so instead of silently dropping them. Models with subword tokenizers (LTX-Video's T5,
LTX-2's Gemma) read every word: no warning.
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING

from aiprod.core.model_files import component_path

if TYPE_CHECKING:
    from aiprod.core.registry import ModelEntry

WORD = re.compile(r"[a-z0-9]+")  # the words of the built-in tokenizer's split (no punctuation)
SPECIAL = {"<pad>", "</s>", "<unk>"}
DOCS = "docs/model_card.md#vocabulary"
VOCAB_TTL_SECONDS = 30.0
_CACHE: dict[tuple[str, str], tuple[float, frozenset[str] | None]] = {}


def _read_vocabulary(entry: ModelEntry) -> frozenset[str] | None:
    if entry.family != "builtin" or entry.path is None:
        return None
    try:
        tok = component_path(entry, "tokenizer", required=False)
        if tok is None or not (tok / "tokenizer.json").is_file():
            return None
        model = json.loads((tok / "tokenizer.json").read_text()).get("model") or {}
    except (OSError, ValueError, AttributeError):
        return None  # a broken entry is reported by the file checks, not here
    if model.get("type") != "WordLevel" or not isinstance(model.get("vocab"), dict):
        return None
    return frozenset(w for w in model["vocab"] if w not in SPECIAL)


def word_vocabulary(entry: ModelEntry) -> frozenset[str] | None:
    """The words ``entry``'s word-level tokenizer knows; None when it reads any word."""
    key = (entry.id, str(entry.path))
    now = time.monotonic()
    hit = _CACHE.get(key)
    if hit is None or now - hit[0] >= VOCAB_TTL_SECONDS:
        hit = (now, _read_vocabulary(entry))
        _CACHE[key] = hit
    return hit[1]


def unknown_words(vocab: frozenset[str] | set[str], *texts: str | None) -> list[str]:
    """The words of ``texts`` not in ``vocab``, once each, in order of appearance."""
    out: list[str] = []
    for text in texts:
        for w in WORD.findall((text or "").lower()):
            if w not in vocab and w not in out:
                out.append(w)
    return out


def prompt_warnings(entry: ModelEntry, prompt: str, negative_prompt: str | None) -> list[str]:
    """One warning naming the prompt's words the model ignores (empty when none)."""
    vocab = word_vocabulary(entry)
    if vocab is None:
        return []
    words = unknown_words(vocab, prompt, negative_prompt)
    if not words:
        return []
    return [f"ignored words not in the built-in model's vocabulary: {', '.join(words)}; see {DOCS}"]
