"""The root `Config` (one attribute per `[section]`), parsing and validation, and the default kaizen.toml.

`load` reads kaizen.toml (+ environment overrides), `from_dict` builds and validates a Config
from a parsed document, `field_docs` reads a section's field docstrings from its class source,
and `default_toml` turns them into the commented file that `kaizen init` writes.
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

from kaizenlm.config.core import (
    AuthConfig,
    ConfigError,
    ControllerConfig,
    DashboardConfig,
    GatewayConfig,
    KafkaConfig,
    PathsConfig,
    _check,
)
from kaizenlm.config.data import AnnotateConfig, CurationConfig, RewardsConfig
from kaizenlm.config.serving import ABConfig, KnowledgeConfig, ScheduleConfig, ServingConfig
from kaizenlm.config.training import BaseModelConfig, EvalConfig, LoraDPOConfig, LoraSFTConfig, RetrainConfig


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
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig)
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
    def general_dir(self) -> Path:
        """The base models' answers to the general prompts (kaizenlm/base/general.py)."""
        return self.home / "general"

    @property
    def replay_path(self) -> Path | None:
        """Where replay rows come from: curation.replay_path, else the answers of the base that
        answered the general prompts last (<home>/general/replay.jsonl), else None."""
        if self.curation.replay_path:
            return Path(os.path.expanduser(self.curation.replay_path)).resolve()
        latest = self.general_dir / "replay.jsonl"
        return latest if latest.is_file() else None

    @property
    def keys_file(self) -> Path:
        """The keys file (auth.keys_file, or <home>/keys.json)."""
        return Path(os.path.expanduser(self.auth.keys_file)).resolve() if self.auth.keys_file else self.home / "keys.json"

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
    "KAIZEN_REGISTER_BASE": ("controller", "register_base"),
    "KAIZEN_BASE_PATH": ("base", "path"),
    "KAIZEN_INGEST_KEY": ("auth", "ingest_key"),
    "KAIZEN_WIDGET_KEY": ("auth", "widget_key"),
    "KAIZEN_ADMIN_KEY": ("auth", "admin_key"),
    "KAIZEN_KEYS_FILE": ("auth", "keys_file"),
    "KAIZEN_FEEDBACK_SECRET": ("auth", "feedback_secret"),
    "KAIZEN_FEEDBACK_SECRET_PREVIOUS": ("auth", "feedback_secret_previous"),
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


def with_overrides(cfg: Config, overrides: dict[str, dict]) -> Config:
    """A copy of cfg with some keys replaced ({section: {key: value}}), validated as if they
    came from kaizen.toml (ConfigError names the key)."""
    changes = {}
    for section, values in overrides.items():
        _check(section in {f.name for f in dataclasses.fields(Config)}, section, "unknown section")
        current = getattr(cfg, section)
        changes[section] = _build_section(type(current), {**dataclasses.asdict(current), **values}, section)
    return dataclasses.replace(cfg, **changes)


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
