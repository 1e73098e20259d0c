"""Serving-side sections of the configuration: `[knowledge]`, `[ab]`, `[serving]` and `[schedule]`."""

from __future__ import annotations

from dataclasses import dataclass

from kaizenlm.config.core import ConfigError, _check, _check_precision


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
    precision: str = "auto"
    """Backend 'local': dtype the models answer in: 'auto' (bf16 on a GPU with bf16 or a CPU that computes it natively, AVX512-BF16 or AMX; else fp32), 'bf16' or 'fp32'. Adapters are merged in fp32, then cast."""
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
        _check_precision(self.precision, "serving.precision")
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
