"""The general data shipped in kaizenlm/base/data/: prompts the base model answers once (its own
answers are the self-distillation targets that keep general skills while retraining) and
multiple-choice items scored by log-likelihood. Reads the two JSONL files; imports nothing."""

from __future__ import annotations

import itertools
import json
import re
import tomllib
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "kaizenlm" / "base" / "data"
PROMPTS = DATA / "general_prompts.jsonl"
CHOICES = DATA / "general_choices.jsonl"

N_PROMPTS = 320
N_CHOICES = 320
MIN_SKILLS = 10
MIN_PER_SKILL = 10
NEAR_DUPLICATE = 0.8  # word-3-gram Jaccard at or above this: two prompts of one file are near-duplicates
FORBIDDEN = ("kaizen", "weather", "refund")  # the product, and the demo's out-of-scope questions


def _read(path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        assert line.strip(), f"{path.name}:{number}: blank line"
        row = json.loads(line)
        assert isinstance(row, dict), f"{path.name}:{number}: not an object"
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def prompts() -> list[dict]:
    return _read(PROMPTS)


@pytest.fixture(scope="module")
def choices() -> list[dict]:
    return _read(CHOICES)


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    words = _normalise(text).split()
    n = min(n, len(words))
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def test_prompt_rows_have_the_right_fields_and_count(prompts):
    assert len(prompts) == N_PROMPTS
    for row in prompts:
        assert set(row) == {"prompt", "skill"}, row
        assert isinstance(row["prompt"], str) and row["prompt"].strip() == row["prompt"] and row["prompt"], row
        assert isinstance(row["skill"], str) and re.fullmatch(r"[a-z]+", row["skill"]), row


def test_choice_rows_have_the_right_fields_and_count(choices):
    assert len(choices) == N_CHOICES
    for row in choices:
        assert set(row) == {"prompt", "choices", "answer", "skill"}, row
        assert isinstance(row["prompt"], str) and row["prompt"].strip() == row["prompt"] and row["prompt"], row
        assert isinstance(row["skill"], str) and re.fullmatch(r"[a-z]+", row["skill"]), row
        assert isinstance(row["choices"], list) and len(row["choices"]) == 4, row
        assert all(isinstance(c, str) and c.strip() == c and c for c in row["choices"]), row
        assert len(set(row["choices"])) == 4, f"choices not distinct: {row}"
        assert type(row["answer"]) is int and 0 <= row["answer"] < 4, row


def test_correct_answer_positions_are_balanced(choices):
    counts = Counter(row["answer"] for row in choices)
    for position in range(4):
        assert 0.15 <= counts[position] / len(choices) <= 0.35, counts


def test_skills_are_many_and_balanced(prompts, choices):
    prompt_skills = Counter(row["skill"] for row in prompts)
    assert sum(1 for n in prompt_skills.values() if n >= MIN_PER_SKILL) >= MIN_SKILLS, prompt_skills
    choice_skills = Counter(row["skill"] for row in choices)
    assert set(choice_skills) <= set(prompt_skills), choice_skills
    assert len(choice_skills) >= MIN_SKILLS and min(choice_skills.values()) >= MIN_PER_SKILL, choice_skills


def test_no_duplicate_prompts_within_or_across_files(prompts, choices):
    seen: dict[str, str] = {}
    for name, rows in (("prompts", prompts), ("choices", choices)):
        for row in rows:
            key = _normalise(row["prompt"])
            assert key not in seen, f"{name}: {row['prompt']!r} duplicates a prompt in {seen[key]}"
            seen[key] = name


@pytest.mark.parametrize("name", ["prompts", "choices"])
def test_no_near_duplicate_prompts_within_a_file(name, request):
    rows = request.getfixturevalue(name)
    shingles = [(row["prompt"], _shingles(row["prompt"])) for row in rows]
    near = [(a, b, round(_jaccard(sa, sb), 2)) for (a, sa), (b, sb) in itertools.combinations(shingles, 2)
            if _jaccard(sa, sb) >= NEAR_DUPLICATE]
    assert not near, near


def test_nothing_about_the_product_or_out_of_scope_topics(prompts, choices):
    texts = [row["prompt"] for row in prompts] + [t for row in choices for t in (row["prompt"], *row["choices"])]
    for text in texts:
        for word in FORBIDDEN:
            assert word not in text.lower(), f"{word!r} in {text!r}"


def test_the_data_ships_in_the_wheel():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "base/data/*" in package_data["kaizenlm"]
