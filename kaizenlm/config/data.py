"""Data sections of the configuration: `[rewards]` (the per-turn reward), `[curation]` (feedback -> training data) and `[annotate]` (human review)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from kaizenlm.config.core import _check


@dataclass
class RewardsConfig:
    """Weights of the per-turn reward (kaizenlm/feedback/rewards.py): clip(sum of weight * evidence, -1, 1)."""

    thumbs: float = 0.6
    """Weight of the latest thumbs (+1 / -1) on the turn."""
    rating: float = 0.6
    """Weight of the latest 1-5 rating, scaled to -1..1 ((rating - 3) / 2)."""
    correction: float = -0.6
    """Weight of 'the user sent a correction' (the answer was wrong; the correction itself becomes training data)."""
    regenerate: float = -0.4
    """Weight per 'regenerate' signal (counted up to signal_cap)."""
    copy: float = 0.3
    """Weight per 'copy' signal (counted up to signal_cap)."""
    edit: float = -0.2
    """Weight per 'edit' signal (counted up to signal_cap)."""
    abandon: float = -0.3
    """Weight per 'abandon' signal; conversation-level signals count for the conversation's latest turn before them."""
    completed: float = 0.3
    """Weight per 'completed' signal (counted up to signal_cap)."""
    follow_up: float = 0.0
    """Weight per 'follow_up' signal (counted up to signal_cap)."""
    signal_cap: int = 3
    """Most signals of one kind that count for one turn (ten regenerates weigh as much as signal_cap)."""
    latency: float = -0.2
    """Weight of slowness: 0 at latency_target_ms, the full weight at twice that. Counts only on turns with other feedback."""
    latency_target_ms: float = 3000.0
    """Answer latency (ms) up to which a turn gets no latency penalty."""
    explicit_confidence: float = 0.8
    """Confidence that one piece of explicit feedback (thumbs, rating, correction) gives the reward."""
    implicit_confidence: float = 0.3
    """Confidence that one kind of implicit signal (copy, regenerate, ...) gives; confidence = 1 - prod(1 - c)."""

    def __post_init__(self) -> None:
        for name in ("thumbs", "rating", "correction", "regenerate", "copy", "edit", "abandon", "completed", "follow_up",
                     "latency"):
            _check(-2.0 <= getattr(self, name) <= 2.0, f"rewards.{name}", "must be in -2..2")
        _check(1 <= self.signal_cap <= 100, "rewards.signal_cap", "must be in 1..100")
        _check(self.latency_target_ms > 0, "rewards.latency_target_ms", "must be > 0")
        for name in ("explicit_confidence", "implicit_confidence"):
            _check(0.0 <= getattr(self, name) < 1.0, f"rewards.{name}", "must be in [0, 1)")


# Phrases of answers that say nothing (AI disclaimers, placeholders, non-answers): curation.boilerplate_phrases.
DEFAULT_BOILERPLATE = (
    "as an ai language model", "as a large language model", "i am just an ai", "i m just an ai",
    "lorem ipsum", "insert answer here", "i cannot help with that", "i can t help with that",
    "i do not have access to real time", "i don t have access to real time", "i am not sure", "i m not sure",
    "i do not know", "i don t know",
)


@dataclass
class CurationConfig:
    """How feedback becomes training data: `kaizen dataset build` and the monthly retrain's curate step."""

    window_days: int = 30
    """Look-back of a dataset build when no --since is given; 0 means all data."""
    sft_min_reward: float = 0.5
    """Least per-turn reward for an answer to become an SFT example."""
    sft_require_explicit: bool = False
    """Only answers with explicit feedback (thumbs, rating, correction) become SFT examples."""
    include_corrections: bool = True
    """User corrections become SFT examples and (chosen = correction, rejected = answer) DPO pairs."""
    min_response_chars: int = 2
    """Shorter answers (and corrections) are never chosen as training targets."""
    max_response_chars: int = 8000
    """Longer answers (and corrections) are never chosen as training targets."""
    max_context_chars: int = 16000
    """Turns whose conversation context is longer are left out."""
    max_repetition: float = 0.5
    """Share of repeated word 3-grams above which an answer counts as degenerate (looping) and is not chosen."""
    min_avg_sentence_words: float = 5.0
    """The seed rule: drop turns whose average sentence has fewer words than this (0 turns it off)."""
    sentence_rule_scope: str = "response"
    """What the sentence rule measures: 'response' (the answer, or the correction) or 'turn' (user message + answer)."""
    boilerplate_phrases: list[str] = field(default_factory=lambda: list(DEFAULT_BOILERPLATE))
    """Answers containing one of these phrases (compared case- and punctuation-insensitively) are boilerplate and dropped."""
    pii_keep: list[str] = field(default_factory=list)
    """Exact strings PII scrubbing leaves alone: your organisation's own public addresses and numbers (e.g. "support@example.com")."""
    truncation_min_words: int = 8
    """Answers of at least this many words that end without closing punctuation count as truncated (0: only open code fences and trailing commas/colons)."""
    topic_balance_ratio: float = 3.0
    """No topic keeps more than this many times the examples of the smallest topic (the seed's 1:3 rule); 0 turns balancing off."""
    dedup_threshold: float = 0.8
    """Jaccard similarity (character 5-grams) at which two conversation contexts count as near-duplicates."""
    max_per_prompt: int = 1
    """SFT examples kept per near-duplicate cluster of contexts (best first: corrections, then reward, then newest)."""
    max_per_user: int = 50
    """SFT examples kept per user (the user the turn served), so that no single user dominates a snapshot."""
    max_corrections_per_user: int = 10
    """Of those, at most this many may be the user's own corrections (the strongest training signal, and the one an attacker writes)."""
    max_pairs_per_user: int = 50
    """DPO pairs kept per user (the user of the chosen answer's turn)."""
    correction_min_agreement: int = 2
    """Distinct users (the author included) who must send the same correction before it may replace an answer other users accepted; until then, or until a reviewer accepts it, it is held back. A correction nobody contradicts needs no agreement."""
    hold_flagged_users: bool = True
    """Leave out every turn of a user the anomaly report flags (correction rate, duplicate texts, bursts below); the report names them so a person can look."""
    anomaly_min_corrections: int = 5
    """A user is flagged for their correction rate only with at least this many corrected turns."""
    anomaly_correction_rate: float = 0.8
    """Flag a user whose share of corrected turns reaches this (with anomaly_min_corrections). Honest users of a model that is often wrong correct about half of its answers (the demo's users do: its base knows none of the facts); an attacker corrects every one."""
    anomaly_duplicate_texts: int = 5
    """Flag a user who sent the same correction or comment text (normalized) this many times."""
    anomaly_burst_events: int = 30
    """Flag a user who sent this many feedback events and signals within anomaly_burst_seconds."""
    anomaly_burst_seconds: int = 60
    """The window of the burst rule, in seconds."""
    pair_margin: float = 0.4
    """Least reward difference between chosen and rejected answers of a DPO pair (a turn without a reward counts 0)."""
    pair_min_chosen_reward: float = 0.0
    """Least reward of the chosen answer of a DPO pair that is not a correction."""
    max_pairs_per_prompt: int = 4
    """DPO pairs kept per near-duplicate cluster of contexts."""
    decontam_threshold: float = 0.6
    """Jaccard similarity (character 5-grams) between a prompt and a held-out text at which the prompt is dropped."""
    holdout_path: str = ""
    """File of held-out texts (evaluation questions) that training data must not contain: .txt, .jsonl, .json or .parquet."""
    eval_fraction: float = 0.05
    """Share of the validation split, drawn by whole conversations and near-duplicate clusters (nothing leaks across)."""
    replay_fraction: float = 0.08
    """Share of general (replay) examples in the SFT train split, against catastrophic forgetting: 0.05-0.10."""
    replay_fraction_override: bool = False
    """Allow a replay_fraction outside 0.05-0.10 (0 = no replay); only when you know why."""
    replay_path: str = ""
    """JSONL file of general examples to replay and to anchor on (prompt or messages, and response; skill and anchor_response, the KL anchor's target when it differs, optional). Empty: no replay rows, and the snapshot warns; `kaizen demo` writes and sets its own."""
    workers: int = 0
    """CPU processes of a dataset build: 2 runs independent steps (halves of the PII scrub, near-duplicate clusters beside decontamination, pair mining beside SFT selection) in a forked child too; 1 runs all in one process; 0 = 2 where the machine has 2 or more cores. The snapshot is the same either way."""

    def __post_init__(self) -> None:
        _check(0 <= self.window_days <= 36500, "curation.window_days", "must be in 0..36500")
        _check(-1.0 <= self.sft_min_reward <= 1.0, "curation.sft_min_reward", "must be in -1..1")
        _check(self.min_response_chars >= 1, "curation.min_response_chars", "must be >= 1")
        _check(self.max_response_chars >= self.min_response_chars, "curation.max_response_chars",
               "must be >= curation.min_response_chars")
        _check(self.max_context_chars >= 1, "curation.max_context_chars", "must be >= 1")
        _check(0.0 < self.max_repetition <= 1.0, "curation.max_repetition", "must be in (0, 1]")
        _check(0.0 < self.dedup_threshold <= 1.0, "curation.dedup_threshold", "must be in (0, 1]")
        _check(self.max_per_prompt >= 1, "curation.max_per_prompt", "must be >= 1")
        _check(self.max_per_user >= 1, "curation.max_per_user", "must be >= 1")
        _check(self.max_corrections_per_user >= 0, "curation.max_corrections_per_user", "must be >= 0")
        _check(self.max_pairs_per_user >= 1, "curation.max_pairs_per_user", "must be >= 1")
        _check(self.correction_min_agreement >= 1, "curation.correction_min_agreement", "must be >= 1")
        _check(self.anomaly_min_corrections >= 1, "curation.anomaly_min_corrections", "must be >= 1")
        _check(0.0 < self.anomaly_correction_rate <= 1.0, "curation.anomaly_correction_rate", "must be in (0, 1]")
        _check(self.anomaly_duplicate_texts >= 2, "curation.anomaly_duplicate_texts", "must be >= 2")
        _check(self.anomaly_burst_events >= 2, "curation.anomaly_burst_events", "must be >= 2")
        _check(1 <= self.anomaly_burst_seconds <= 86400, "curation.anomaly_burst_seconds", "must be in 1..86400")
        _check(0.0 < self.pair_margin <= 2.0, "curation.pair_margin", "must be in (0, 2]")
        _check(-1.0 <= self.pair_min_chosen_reward <= 1.0, "curation.pair_min_chosen_reward", "must be in -1..1")
        _check(self.max_pairs_per_prompt >= 1, "curation.max_pairs_per_prompt", "must be >= 1")
        _check(0.0 < self.decontam_threshold <= 1.0, "curation.decontam_threshold", "must be in (0, 1]")
        _check(0.0 <= self.eval_fraction < 1.0, "curation.eval_fraction", "must be in [0, 1)")
        _check(0.0 <= self.replay_fraction < 1.0, "curation.replay_fraction", "must be in [0, 1)")
        _check(self.replay_fraction_override or 0.05 <= self.replay_fraction <= 0.10, "curation.replay_fraction",
               "must be in 0.05..0.10 (set curation.replay_fraction_override = true to use another value)")
        _check(self.min_avg_sentence_words >= 0, "curation.min_avg_sentence_words", "must be >= 0")
        _check(self.sentence_rule_scope in ("response", "turn"), "curation.sentence_rule_scope",
               "must be 'response' or 'turn'")
        _check(self.truncation_min_words >= 0, "curation.truncation_min_words", "must be >= 0")
        _check(self.topic_balance_ratio == 0 or self.topic_balance_ratio >= 1.0, "curation.topic_balance_ratio",
               "must be 0 (off) or >= 1")
        _check(self.workers in (0, 1, 2), "curation.workers", "must be 0 (automatic), 1 or 2")

    @property
    def processes(self) -> int:
        """The processes a build uses: ``workers``, or for 0, 2 where os.cpu_count() >= 2."""
        return self.workers or (2 if (os.cpu_count() or 1) >= 2 else 1)


DEFAULT_REVIEW_LABELS = ("correct", "incomplete", "wrong", "unsafe", "off-topic")


@dataclass
class AnnotateConfig:
    """Human review and annotation: the review queue, labels, agreement, the training gate (docs/ANNOTATION.md)."""

    min_kappa: float = 0.8
    """Least Fleiss' kappa of the schema labels over the items 2+ reviewers labelled for reviewed labels to enter training (the 0.8 convention)."""
    overlap: float = 0.1
    """Share of each kind's review items labelled by 2 or more reviewers, so agreement can be measured (0..1)."""
    overlap_reviewers: int = 2
    """Reviewers assigned to each overlap item (an item outside the overlap gets one)."""
    sample_size: int = 100
    """Served answers drawn at random each week into the review queue (kind 'sample'; 0: none)."""
    blind_pairs: int = 50
    """Most blind comparisons (champion vs candidate on the evaluation's domain questions) queued after a retrain passes its gate (0: none)."""
    schema: list[str] = field(default_factory=lambda: list(DEFAULT_REVIEW_LABELS))
    """The label schema: every reviewed answer gets one of these labels beside its verdict (accept, edit, reject)."""
    reviewers: list[str] = field(default_factory=list)
    """Named reviewers that new items are assigned to by the weekly sweep and after a retrain (empty: assign with `kaizen annotate queue assign --reviewers`)."""

    def __post_init__(self) -> None:
        _check(0.0 < self.min_kappa <= 1.0, "annotate.min_kappa", "must be in (0, 1]")
        _check(0.0 <= self.overlap <= 1.0, "annotate.overlap", "must be in 0..1 (a share of the items)")
        _check(self.overlap_reviewers >= 2, "annotate.overlap_reviewers", "must be >= 2 (agreement needs two)")
        _check(0 <= self.sample_size <= 100_000, "annotate.sample_size", "must be in 0..100000")
        _check(0 <= self.blind_pairs <= 100_000, "annotate.blind_pairs", "must be in 0..100000")
        self.schema = [str(s).strip() for s in self.schema]
        _check(len(self.schema) >= 2, "annotate.schema", "must name at least 2 labels")
        _check(all(self.schema), "annotate.schema", "labels must not be empty")
        _check(len(set(self.schema)) == len(self.schema), "annotate.schema", "labels must be distinct")
        self.reviewers = [str(r).strip() for r in self.reviewers]
        _check(all(self.reviewers), "annotate.reviewers", "names must not be empty")
        _check(len(set(self.reviewers)) == len(self.reviewers), "annotate.reviewers", "names must be distinct")
