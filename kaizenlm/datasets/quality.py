"""Quality rules of a training target (the seed rules): why a text cannot be learned from.

`text_issue` names the first problem of a text: empty; too short or too long; boilerplate
(AI disclaimers, placeholders, non-answers: ``boilerplate_phrases``); truncated (an open
code fence, a trailing comma or colon, or a long answer without closing punctuation);
average sentence under ``min_avg_sentence_words`` words; looping (repeated word 3-grams).
`quality_params` is the part of ``[curation]`` these rules read, as the funnel reports it.
The curation step that applies them is `kaizenlm.datasets.curation.quality_filter`.
"""

from __future__ import annotations

import functools
import re

from kaizenlm.config import CurationConfig
from kaizenlm.datasets.text import normalize

_SENTENCE_BREAK = re.compile(r"(?<=[.!?…。！？])\s+|\n+")
_CODE_BLOCK = re.compile(r"```.*?(?:```|\Z)", re.S)
_WORD = re.compile(r"[^\W_]+")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
_OPEN_END = re.compile(r"[,;:(\[{\-–—]\s*\Z")
_CLOSED_END = re.compile(r"[.!?…。！？\"'”’»)\]}>*`~]\s*\Z")


def avg_sentence_words(text: str) -> float | None:
    """Mean words per sentence of a text's prose (code blocks left out; CJK counts two
    characters as a word); None when it has no prose."""
    sentences = [s for s in _SENTENCE_BREAK.split(_CODE_BLOCK.sub("\n", text)) if _WORD.search(s)]
    if not sentences:
        return None
    words = 0.0
    for s in sentences:
        cjk = len(_CJK.findall(s))
        words += len(_WORD.findall(_CJK.sub(" ", s) if cjk else s)) + cjk / 2
    return words / len(sentences)


def is_truncated(text: str, min_words: int) -> bool:
    """An open code fence, a trailing comma/colon/dash, or (with at least ``min_words`` words,
    when min_words > 0) no closing punctuation; a final URL or path counts as closed."""
    stripped = text.rstrip()
    if stripped.count("```") % 2 or _OPEN_END.search(stripped):
        return True
    if not min_words or _CLOSED_END.search(stripped):
        return False
    return len(_WORD.findall(stripped)) >= min_words and "/" not in stripped.split()[-1]


@functools.lru_cache(maxsize=16)
def _phrase_pattern(phrases: tuple[str, ...]) -> re.Pattern:
    alternatives = "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True)) or "(?!)"
    return re.compile(rf"(?:^| )(?:{alternatives})(?: |$)")


def repetition(text: str, normalized: str | None = None) -> float:
    """Share of repeated word 3-grams (0 for varied text, near 1 for a looping answer).

    Texts under 12 words count as 0: too short to judge. ``normalized`` saves normalizing again.
    """
    words = (normalize(text) if normalized is None else normalized).split()
    if len(words) < 12:
        return 0.0
    grams = list(zip(words, words[1:], words[2:], strict=False))
    return 1.0 - len(set(grams)) / len(grams)


def text_issue(text: str | None, cfg: CurationConfig, normalized: str | None = None, prompt: str = "",
               casual: bool = False) -> str | None:
    """Why a text cannot be a training target (None when it can): empty, too_short, too_long,
    boilerplate, truncated, short_sentences or repetitive.

    ``prompt`` is the user message (the sentence rule measures it too when
    ``sentence_rule_scope = "turn"``); ``casual`` texts (user corrections) are not held to
    closing punctuation.
    """
    if not isinstance(text, str) or not text.strip():
        return "empty"
    n = len(text.strip())
    if n < cfg.min_response_chars:
        return "too_short"
    if n > cfg.max_response_chars:
        return "too_long"
    normalized = normalize(text) if normalized is None else normalized
    if cfg.boilerplate_phrases and _phrase_pattern(_phrases(tuple(cfg.boilerplate_phrases))).search(normalized):
        return "boilerplate"
    if is_truncated(text, 0 if casual else cfg.truncation_min_words):
        return "truncated"
    if cfg.min_avg_sentence_words:
        measured = f"{prompt}\n{text}" if cfg.sentence_rule_scope == "turn" and prompt else text
        avg = avg_sentence_words(measured)
        if avg is not None and avg < cfg.min_avg_sentence_words:
            return "short_sentences"
    if repetition(text, normalized) > cfg.max_repetition:
        return "repetitive"
    return None


_PHRASES: dict[tuple[str, ...], tuple[str, ...]] = {}


def _phrases(raw: tuple[str, ...]) -> tuple[str, ...]:
    if raw not in _PHRASES:
        _PHRASES[raw] = tuple(p for p in (normalize(x) for x in raw) if p)
    return _PHRASES[raw]


def quality_params(cfg: CurationConfig) -> dict:
    return {k: getattr(cfg, k) for k in ("min_response_chars", "max_response_chars", "min_avg_sentence_words",
                                         "sentence_rule_scope", "truncation_min_words", "max_repetition",
                                         "boilerplate_phrases")}
