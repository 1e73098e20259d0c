"""Routing state: which version answers each alias, and which experiments split traffic.

The controller is the only writer. It publishes the whole state as one JSON message with
key ``b"routing"`` on the compacted topic ``<prefix>.control`` (`publish_routing`); every
gateway follows that topic from the beginning with a group-less consumer
(`RoutingFollower`) and keeps the newest state, so a gateway that starts late reads the
latest one and a change reaches every replica within one poll (≤ 0.25 s plus the broker).

``version`` orders states: the publisher gives each new content ``max(last + 1, now in
ms)``, so it grows across controller restarts too; a follower never goes back to an older
version. A republish of unchanged content keeps its version (the heartbeat that restores
the state on a broker that lost it, e.g. the memory-only embedded one after a restart).

Assignment to an arm is `assign_arm`: a hash of (experiment, user), so a user stays in the
same arm on every replica and every request, and a new experiment reshuffles everyone.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from dataclasses import asdict, dataclass, field

import orjson

from kaizenlm.config import Config
from kaizenlm.registry.aliases import CHALLENGER, CHAMPION, KNOWLEDGE  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

ROUTING_KEY = b"routing"


@dataclass(frozen=True)
class Target:
    """How a backend serves one version: the local backend loads `model_dir` (+ `adapter_dir`);
    the openai backend sends `upstream_model` as the request's model name."""

    version_id: str
    kind: str  # "base" | "adapter"
    model_dir: str | None = None
    adapter_dir: str | None = None
    upstream_model: str = ""


def target_for(con, version) -> Target:
    """The serving target of a registry Version (kinds base and adapter; raises ValueError otherwise)."""
    from kaizenlm.registry.lineage import model_dirs, version_lookup

    if version.kind not in ("base", "adapter"):
        raise ValueError(f"version '{version.version_id}' is a {version.kind}, not a model; it cannot serve")
    upstream = str(version.config.get("upstream_model") or version.version_id)
    base_dir, adapter_dir = model_dirs(version.to_dict(), version_lookup(con))
    return Target(version.version_id, version.kind, base_dir, adapter_dir, upstream)


@dataclass(frozen=True)
class KnowledgeTarget:
    """The knowledge index gateways retrieve from: the version the `knowledge` alias points at."""

    version_id: str
    artifact_dir: str


@dataclass(frozen=True)
class ExperimentRoute:
    experiment_id: str
    alias: str
    champion: str
    challenger: str
    split: float  # the challenger's share of users


@dataclass(frozen=True)
class Route:
    """Where one request goes."""

    version_id: str
    target: Target
    variant: str | None = None  # "champion" | "challenger" inside an experiment
    experiment_id: str | None = None
    alias: str | None = None


class UnknownModel(LookupError):
    """The request's `model` is neither an alias nor a servable version."""


@dataclass(frozen=True)
class RoutingState:
    version: int = 0
    aliases: dict[str, str] = field(default_factory=dict)
    experiments: tuple[ExperimentRoute, ...] = ()
    targets: dict[str, Target] = field(default_factory=dict)
    published_at: float = 0.0
    knowledge: KnowledgeTarget | None = None

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes) -> RoutingState:
        d = orjson.loads(raw)
        return cls(
            version=int(d["version"]), aliases=dict(d.get("aliases", {})),
            experiments=tuple(ExperimentRoute(**e) for e in d.get("experiments", [])),
            targets={k: Target(**t) for k, t in d.get("targets", {}).items()},
            published_at=float(d.get("published_at", 0.0)),
            knowledge=KnowledgeTarget(**d["knowledge"]) if d.get("knowledge") else None,
        )

    def same_content(self, other: RoutingState | None) -> bool:
        return other is not None and (self.aliases, self.experiments, self.targets, self.knowledge) == (
            other.aliases, other.experiments, other.targets, other.knowledge)

    def experiment_for(self, alias: str) -> ExperimentRoute | None:
        for e in self.experiments:
            if e.alias == alias:
                return e
        return None

    def route(self, model: str, user: str) -> Route:
        """Resolve a request's `model` (an alias or a version id) for this user.

        An alias with a running experiment splits its users between champion and challenger
        (sticky: `assign_arm`); any other alias or a version id names one version.
        """
        if model in self.aliases:
            experiment = self.experiment_for(model)
            if experiment is not None:
                arm = assign_arm(experiment.experiment_id, user, experiment.split)
                version = experiment.challenger if arm == CHALLENGER else experiment.champion
                return Route(version, self._target(version, model), arm, experiment.experiment_id, model)
            version = self.aliases[model]
            return Route(version, self._target(version, model), alias=model)
        if model in self.targets:
            return Route(model, self.targets[model])
        known = ", ".join(sorted(self.aliases)) or "none yet"
        raise UnknownModel(f"model '{model}' is neither an alias ({known}) nor a servable version id; "
                           "see GET /v1/models")

    def _target(self, version_id: str, alias: str) -> Target:
        target = self.targets.get(version_id)
        if target is None:  # the controller only publishes aliases of servable versions; be explicit anyway
            raise UnknownModel(f"alias '{alias}' points at '{version_id}', which is not servable "
                               "(not a base or adapter version, or tainted)")
        return target


def assign_arm(experiment_id: str, user: str, split: float) -> str:
    """'challenger' for a `split` share of users, else 'champion'; the same answer for the
    same (experiment, user) on every replica (the first 8 bytes of sha256, as a fraction)."""
    digest = hashlib.sha256(f"{experiment_id}:{user}".encode()).digest()
    return CHALLENGER if int.from_bytes(digest[:8], "big") / 2.0**64 < split else CHAMPION


# --------------------------------------------------------------------------------------
# Controller side
# --------------------------------------------------------------------------------------


def _producer(cfg: Config):
    from kafka import KafkaProducer

    # Short timeouts: the controller's loop retries every second, and an admin request that
    # publishes should not hang while the broker is away.
    return KafkaProducer(bootstrap_servers=cfg.kafka.servers, acks="all", linger_ms=0, max_block_ms=2000,
                         request_timeout_ms=3000, retries=2, client_id="kaizen-controller-routing",
                         enable_idempotence=False)


def publish_routing(cfg: Config, state: RoutingState, producer=None, timeout_s: float = 5.0) -> None:
    """Send the state with key b"routing" to the compacted control topic and wait for the
    broker's ack. Raises kafka.errors.KafkaError when the broker does not take it."""
    own = producer is None
    producer = producer or _producer(cfg)
    try:
        producer.send(cfg.kafka.topic("control"), key=ROUTING_KEY, value=state.to_json()).get(timeout=timeout_s)
        producer.flush(timeout=timeout_s)
    finally:
        if own:
            producer.close(timeout=5)


class RoutingPublisher:
    """The controller's publisher: one producer, a version per distinct content, thread-safe."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.last: RoutingState | None = None
        self.published = False  # whether `last` reached the broker
        self._producer = None
        self._lock = threading.Lock()

    def publish(self, state: RoutingState) -> RoutingState:
        """Version the state (unchanged content keeps its version) and publish it.

        Returns the published state; raises KafkaError when the broker is unreachable (the
        state is then kept as `last`, unpublished, for the next heartbeat to retry).
        """
        with self._lock:
            if state.same_content(self.last):
                state = self.last
            else:
                previous = self.last.version if self.last else 0
                state = RoutingState(max(previous + 1, int(time.time() * 1000)), state.aliases, state.experiments,
                                     state.targets, time.time(), state.knowledge)
                self.last, self.published = state, False
            try:
                if self._producer is None:
                    self._producer = _producer(self.cfg)
                publish_routing(self.cfg, state, self._producer)
            except Exception:
                self._close_producer()
                raise
            self.published = True
            return state

    def _close_producer(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):  # closing a producer whose broker is gone may fail
                self._producer.close(timeout=1)
            self._producer = None

    def close(self) -> None:
        with self._lock:
            self._close_producer()


# --------------------------------------------------------------------------------------
# Gateway side
# --------------------------------------------------------------------------------------


class RoutingFollower:
    """A thread that follows the control topic and keeps the newest routing state.

    It reads from the beginning (a compacted topic holds the latest state per key), never
    joins a consumer group (every gateway reads everything) and reconnects on its own when
    the broker goes away. `on_change(state)` runs in the thread after each newer state.
    """

    def __init__(self, cfg: Config, on_change=None, poll_ms: int = 200):
        self.cfg = cfg
        self.topic = cfg.kafka.topic("control")
        self.on_change = on_change
        self.poll_ms = poll_ms
        self._state: RoutingState | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="routing-follower", daemon=True)

    @property
    def state(self) -> RoutingState | None:
        return self._state

    def start(self) -> RoutingFollower:
        self._thread.start()
        return self

    def wait_version(self, n: int, timeout: float = 10.0) -> bool:
        """Block until a state with version >= n is applied; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._state is None or self._state.version < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def apply(self, raw: bytes) -> bool:
        """Apply one message value; True when it was newer than the current state."""
        try:
            state = RoutingState.from_json(raw)
        except (ValueError, KeyError, TypeError) as e:
            log.warning("ignoring an unreadable routing message: %s", e)
            return False
        with self._cond:
            if self._state is not None and state.version <= self._state.version:
                return False
            self._state = state
            self._cond.notify_all()
        log.info("routing version %d: aliases %s, experiments %s", state.version, state.aliases,
                 [e.experiment_id for e in state.experiments])
        if self.on_change is not None:
            try:
                self.on_change(state)
            except Exception:
                log.exception("routing on_change hook failed")
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            consumer = None
            try:
                consumer = self._connect()
                if consumer is None:
                    continue
                while not self._stop.is_set():
                    for records in consumer.poll(timeout_ms=self.poll_ms).values():
                        for record in records:
                            if record.key == ROUTING_KEY and record.value:
                                self.apply(record.value)
            except Exception as e:  # broker gone, topic deleted...: reconnect after a pause
                log.warning("routing follower: %s; reconnecting", e)
                self._stop.wait(1.0)
            finally:
                if consumer is not None:
                    consumer.close()

    def _connect(self):
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(
            bootstrap_servers=self.cfg.kafka.servers, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_wait_ms=100, request_timeout_ms=5000,
            reconnect_backoff_max_ms=1000, client_id="kaizen-gateway-routing",
        )
        partitions = consumer.partitions_for_topic(self.topic)
        while not partitions and not self._stop.is_set():
            # The controller creates the topic; a gateway started first waits for it.
            self._stop.wait(0.5)
            consumer.topics()  # refresh metadata
            partitions = consumer.partitions_for_topic(self.topic)
        if not partitions:
            consumer.close()
            return None
        consumer.assign([TopicPartition(self.topic, p) for p in sorted(partitions)])
        consumer.seek_to_beginning()
        return consumer
