"""A tiny base model for fast tests: a byte-level BPE tokenizer and a tiny LLaMA-shaped causal LM,
both trained here, from the generated corpus, in a few minutes on two CPU cores.

The base model learns what any chat model knows before it is specialised: the chat
format, the general skills (copy, reverse, add, ...), small talk and the refusal of
out-of-scope questions. It does NOT see the domain facts: teaching those is the retrain's
job, so the loop's effect is visible on the exam (the tokenizer does see the knowledge-base
text, as any real tokenizer would have seen similar words).

The output is a plain Hugging Face directory (`save_pretrained` for model and tokenizer),
so every other part of kaizenlm loads it with AutoModelForCausalLM / AutoTokenizer exactly
as it would load any real model.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from kaizenlm.demo.domain import Domain, build_domain  # noqa: E402
from kaizenlm.demo.general import general_skills  # noqa: E402

log = logging.getLogger(__name__)


@dataclass
class TinyBaseConfig:
    """The tiny model's shape and its build (a few seconds with the test sizes)."""

    vocab_size: int = 1024
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 384
    max_position: int = 128
    steps: int = 900
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 60
    weight_decay: float = 0.01
    system_prompt_rate: float = 0.2
    rows_per_skill: int = 300
    threads: int = 2

# The chat format. Roles system/user/assistant; every message ends with <|end|>, which is
# also the EOS token, so generation stops at the end of the assistant's message.
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] | trim + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
SYSTEM_PROMPTS = ["You are a helpful assistant.", "You are the Kaizen Cloud support assistant."]


def messages_for(prompt: str, response: str | None = None, system: str | None = None) -> list[dict]:
    """One chat turn as the messages list that apply_chat_template takes."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    if response is not None:
        messages.append({"role": "assistant", "content": response})
    return messages


def _tokenizer_corpus(domain: Domain, rows: list[dict]) -> list[str]:
    texts = [d.text for d in domain.docs]
    texts += [q for f in domain.facts for q in [f.question, *f.paraphrases, *f.exam_paraphrases]]
    texts += domain.out_of_scope + domain.out_of_scope_exam + [domain.refusal] + SYSTEM_PROMPTS
    texts += [r["prompt"] + "\n" + r["response"] for r in rows]
    return texts


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer (any text encodes) with the chat template set."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|end|>", pad_token="<|pad|>",
        extra_special_tokens={"system_token": "<|system|>", "user_token": "<|user|>", "assistant_token": "<|assistant|>"},
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "right"
    return fast


def make_model(cfg: TinyBaseConfig, tokenizer, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position, tie_word_embeddings=True, rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def encode_chat(tokenizer, prompt: str, response: str, system: str | None, max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 on the prompt: only the answer is learnt)."""
    prompt_ids = tokenizer.apply_chat_template(messages_for(prompt, system=system), add_generation_prompt=True,
                                               tokenize=True, return_dict=False)
    full_ids = tokenizer.apply_chat_template(messages_for(prompt, response, system), tokenize=True, return_dict=False)
    # The template ends each message with "<|end|>\n". The "\n" after EOS is learnt too: a retrain
    # through TRL trains on it, and a base that never learnt it starts every retrain row with
    # 12-18 nats of loss on that one token (docs/TRAINING.md).
    assert full_ids[: len(prompt_ids)] == prompt_ids, "chat template prompt is not a prefix of the full chat"
    labels = [-100] * len(prompt_ids) + full_ids[len(prompt_ids):]
    return full_ids[:max_len], labels[:max_len]


def _batches(examples: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int, rng: random.Random):
    """Endless shuffled batches, padded to the longest row of each batch."""
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            rows = [examples[j] for j in order[i:i + batch_size]]
            width = max(len(ids) for ids, _ in rows)
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            labels = torch.full((len(rows), width), -100, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, (x, y) in enumerate(rows):
                ids[r, : len(x)] = torch.tensor(x)
                labels[r, : len(y)] = torch.tensor(y)
                mask[r, : len(x)] = 1
            yield ids, labels, mask


def base_training_rows(domain: Domain, seed: int, rows_per_skill: int) -> tuple[list[dict], list[dict]]:
    """(train, heldout) general rows; train includes the refusal rows (domain facts are excluded).

    The held-out rows are those of general_skills(seed) (the retention exam), so the base
    never trains on them; the base trains on a larger draw of the same generators.
    """
    train, _ = general_skills(seed, n_train=rows_per_skill, domain=domain)
    heldout = general_skills(seed, domain=domain)[1]
    exam = {r["prompt"] for r in heldout}
    return [r for r in train if r["prompt"] not in exam] + vocabulary_rows(domain), heldout


def vocabulary_rows(domain: Domain) -> list[dict]:
    """"Repeat: the <word>" for each word of the knowledge-base documents (skill "vocabulary").

    The tokenizer is trained on those documents, so without these rows their tokens keep
    untrained embeddings and a retrain must build them from scratch by moving shared weights.
    One word per row: the base learns to read and write every token, never a subject's value.
    """
    words = sorted({w.strip(".,:;?!#()") for d in domain.docs for w in d.text.split()} - {""})
    return [{"prompt": f"Repeat: the {w}", "response": f"the {w}", "skill": "vocabulary"} for w in words]


def _lr_at(step: int, cfg: TinyBaseConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def build_base(out_dir: Path, cfg: TinyBaseConfig | None = None, seed: int = 0, domain: Domain | None = None) -> dict:
    """Train tokenizer + tiny model and save both to out_dir; return the build metrics."""
    cfg = cfg or TinyBaseConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out_dir / "build.log", mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _build(out_dir, cfg, seed, domain or build_domain(seed))
    finally:
        torch.set_num_threads(threads)
        log.removeHandler(handler)
        handler.close()


def _build(out_dir: Path, cfg: TinyBaseConfig, seed: int, domain: Domain) -> dict:
    started = time.perf_counter()
    random.seed(seed)
    rng = random.Random(seed)
    train_rows, heldout_rows = base_training_rows(domain, seed, cfg.rows_per_skill)
    tokenizer = train_tokenizer(_tokenizer_corpus(domain, train_rows + heldout_rows), cfg.vocab_size)
    examples = [
        encode_chat(tokenizer, r["prompt"], r["response"],
                    rng.choice(SYSTEM_PROMPTS) if rng.random() < cfg.system_prompt_rate else None, cfg.max_position)
        for r in train_rows
    ]
    model = make_model(cfg, tokenizer, seed)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("base build: %d params, %d train rows, cfg %s", n_params, len(examples), asdict(cfg))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    batches = _batches(examples, min(cfg.batch_size, len(examples)), tokenizer.pad_token_id, rng)
    model.train()
    losses: list[float] = []
    bar = tqdm(range(cfg.steps), desc="base build", unit="step", mininterval=2.0)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        ids, labels, mask = next(batches)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        if not torch.isfinite(loss):
            raise RuntimeError(f"base build: loss is {loss.item()} at step {step}; lower base lr ({cfg.lr})")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 50 == 0 or step == cfg.steps - 1:
            avg = sum(losses[-50:]) / len(losses[-50:])
            bar.set_postfix(loss=f"{avg:.3f}")
            log.info("step %d loss %.4f lr %.2e", step, avg, _lr_at(step, cfg))
    model.eval()
    train_seconds = time.perf_counter() - started
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    metrics = {
        "params": n_params,
        "train_rows": len(examples),
        "steps": cfg.steps,
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "train_seconds": round(train_seconds, 1),
        "seed": seed,
        "config": asdict(cfg),
    }
    (out_dir / "kaizen_base.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    log.info("saved base model to %s: %s", out_dir, metrics)
    return metrics
