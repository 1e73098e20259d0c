"""Training sections of the configuration: `[base]`, `[sft]`, `[dpo]`, `[retrain]` and `[eval]`."""

from __future__ import annotations

from dataclasses import dataclass, field

from kaizenlm.config.core import _check


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

    suite_path: str = ""
    """JSONL evaluation suite: rows {kind: domain|general|refusal, prompt, reference, must_include?} (docs/TRAINING.md). Empty: `kaizen eval` and the monthly gate refuse to run and say so; `kaizen demo` writes and sets its own."""
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
