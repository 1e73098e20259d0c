"""The KL anchor: general prompts on which a retrain keeps the model's next-token
distributions close to the base model's. The top of this module chooses the rows; the
bottom tokenizes them (setup_anchor) and adds the KL term to the SFT and DPO losses
(AnchorLoss, mixed into both recipes' trainers).

Why: replay at 5-10% of the SFT rows cannot hold a small model's general skills while it
learns new facts (docs/TRAINING.md "Forgetting countermeasures"); a KL term towards the
base's own predictions on many *other* general prompts does. These prompts are not SFT
rows: they are never trained towards a reference answer, only towards the base's outputs.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from kaizenlm.config import LoraSFTConfig
from kaizenlm.eval.evaluate import answer_positions
from kaizenlm.retrain import shared_prefix


def prompt_key(prompt: str | list[dict]) -> str:
    """The last user message's text, whitespace-normalised: how rows are matched across sources."""
    from kaizenlm.base.model import as_messages

    users = [m["content"] for m in as_messages(prompt) if m["role"] == "user"]
    return " ".join((users[-1] if users else "").split())


def pool_from_source(source: str) -> list[dict]:
    """General rows {messages, response, skill} of a replay file (as curation.replay_path reads it;
    `skill` when the file's records carry one). The response is the record's `anchor_response`
    when it has one: the base's whole answer where the replay target was trimmed."""
    from kaizenlm.datasets.snapshots import load_replay

    return [{"messages": r["messages"], "response": r.get("anchor_response") or r["response"],
             "skill": r.get("skill")} for r in load_replay(source)]


def snapshot_source(snapshot_dir: str | Path) -> str | None:
    """The replay source a snapshot's general rows came from (its manifest's mix_ratio.source)."""
    path = Path(snapshot_dir) / "manifest.json"
    if not path.is_file():
        return None
    return (json.loads(path.read_text(encoding="utf-8")).get("mix_ratio") or {}).get("source")


def rows_for(source: str, seed: int, sft_rows: list[dict], cfg: LoraSFTConfig,
             eval_prompts: list[str]) -> list[dict]:
    """The anchor rows of a retrain: general rows of the replay file ``source`` that are neither
    SFT rows (replay rows included) nor any prompt the evaluation asks (``eval_prompts``: the
    suite's, perturbed copies too: anchoring on an exam question would inflate its score)."""
    exclude = {prompt_key(r["prompt"]) for r in sft_rows} | {prompt_key(p) for p in eval_prompts}
    return select(pool_from_source(source), exclude, cfg, seed)


def select(pool: list[dict], exclude: set[str], cfg: LoraSFTConfig, seed: int) -> list[dict]:
    """The anchor rows: pool rows whose prompt is not in ``exclude`` (SFT and held-out prompts),
    at most ``cfg.anchor_pool_size``, every skill equally often when rows name one, plus
    ``cfg.anchor_perturb_copies`` perturbed copies of each (response None: the base answers)."""
    rng = random.Random(seed + 17)
    rows = [r for r in pool if prompt_key(r["messages"]) not in exclude]
    rows = list({prompt_key(r["messages"]): r for r in rows}.values())
    rng.shuffle(rows)
    rows = rows[: cfg.anchor_pool_size]
    if cfg.anchor_balance_skills:
        rows = _balanced(rows)
    vocabulary = sorted({w for r in rows for w in prompt_key(r["messages"]).split()})
    copies = []
    for row in rows:
        for _ in range(cfg.anchor_perturb_copies):
            text = _perturbed(prompt_key(row["messages"]), vocabulary, rng)
            if text not in exclude:
                copies.append({"messages": [*row["messages"][:-1], {"role": "user", "content": text}],
                               "response": None, "skill": row.get("skill")})
    return rows + copies


def _balanced(rows: list[dict]) -> list[dict]:
    """Small skills repeated until each skill has as many rows as the largest (rows without a skill: as is)."""
    by_skill: dict[str | None, list[dict]] = defaultdict(list)
    for r in rows:
        by_skill[r.get("skill")].append(r)
    if len([s for s in by_skill if s is not None]) < 2:
        return rows
    top = max(len(v) for s, v in by_skill.items() if s is not None)
    return [v[i % len(v)] for s, v in by_skill.items() for i in range(top if s is not None else len(v))]


def _perturbed(text: str, vocabulary: list[str], rng: random.Random) -> str:
    """One word dropped, inserted or replaced: the anchor then also covers prompts near the pool's."""
    words = text.split()
    op = rng.choice(["drop", "insert", "replace"]) if len(words) > 1 else "insert"
    i = rng.randrange(len(words)) if words else 0
    if op == "drop":
        del words[i]
    elif op == "insert":
        words.insert(i, rng.choice(vocabulary))
    else:
        words[i] = rng.choice(vocabulary)
    return " ".join(words)


def answer_missing(rows: list[dict], model, tokenizer) -> list[dict]:
    """Rows whose response is None get the model's greedy answer (call it with the base model)."""
    from kaizenlm.base.generate import generate_answers

    todo = sorted({json.dumps(r["messages"]) for r in rows if r["response"] is None})
    if not todo:
        return rows
    answers = dict(zip(todo, generate_answers(model, tokenizer, [json.loads(t) for t in todo]), strict=True))
    return [{**r, "response": answers[json.dumps(r["messages"])]} if r["response"] is None else r for r in rows]


# ---------------------------------------------------------------- the anchor's loss

@dataclass
class Anchor:
    """Tokenized anchor rows (input ids, labels with the prompt masked) and the step's draw.
    base_logp: per row, the base's log-probabilities where an answer token is predicted
    ([answer tokens, vocab]; rows with the same ids share one tensor), computed once by
    setup_anchor; None: the base runs on every draw instead."""

    rows: list[tuple[list[int], list[int]]]
    weight: float
    batch_size: int
    pad_id: int
    rng: random.Random
    last_kl: float | None = None
    base_logp: list | None = None
    shared_prefix: bool = False  # the step's rows in the shared-prefix layout (shared_prefix.py) when they share one

    def draw(self, device):
        """(model inputs with `labels`, row indices) of the step's rows (random.sample picks the
        same indices from a range as from the list, so draws are as before base_logp existed)."""
        picks = self.rng.sample(range(len(self.rows)), min(self.batch_size, len(self.rows)))
        return self.inputs(picks, device), picks

    def inputs(self, picks: list[int], device) -> dict:
        """input_ids, labels and attention_mask (+ position_ids) of the rows at `picks`: their
        common prefix once (shared_prefix.pack) when that is on and they share one, else right-padded.
        Either way the answer positions come row by row, in order, as base_logp holds them."""
        rows = [self.rows[i] for i in picks]
        n = shared_prefix.prefix_length(rows) if self.shared_prefix else 0
        if n >= shared_prefix.MIN_PREFIX:
            return shared_prefix.pack(rows, n, device)
        ids, labels, mask = self.batch(picks, device)
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    def batch(self, picks: list[int], device):
        """Right-padded (ids, labels, mask) of the rows at `picks`."""
        import torch

        batch = [self.rows[i] for i in picks]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([x + [self.pad_id] * (width - len(x)) for x, _ in batch], device=device)
        labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in batch], device=device)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in batch], device=device)
        return ids, labels, mask


# The base's log-probs of the whole pool are kept in memory when they fit in this much
# (64 rows x 32 answer tokens x a 49k vocabulary in float32: ~400 MB): the base's forward pass
# then runs once per row instead of once per draw (on 2 CPU cores ~1.5 s of a ~9.5 s SFT step).
BASE_LOGP_MAX_BYTES = 1 << 30


def setup_anchor(rows: list[dict] | None, cfg, model, tokenizer, chat: bool, seed: int) -> Anchor | None:
    """The anchor rows (cfg: an SFT or DPO config), answered by the base where they have no
    response, tokenized; None when the anchor is off."""
    from kaizenlm.retrain.launch import rank
    from kaizenlm.retrain.training import log

    if cfg.anchor_weight <= 0:
        return None
    if not rows:
        log.warning("anchor_weight is %s but there are no anchor rows: training without the anchor", cfg.anchor_weight)
        return None
    from peft import PeftModel

    if not chat:
        rows = [{**r, "messages": prompt_key(r["messages"])} for r in rows]
    missing = sum(r["response"] is None for r in rows)
    with model.disable_adapter() if isinstance(model, PeftModel) else contextlib.nullcontext():
        rows = answer_missing(rows, model, tokenizer)  # the base's answers, never an adapter's
    tokenized = [_tokenize(tokenizer, r, chat, cfg.max_length, cfg.anchor_answer_tokens) for r in rows]
    log.info("anchor: %d rows (%d answered by the base), weight %s, %d per step",
             len(rows), missing, cfg.anchor_weight, cfg.anchor_batch_size)
    anchor = Anchor([t for t in tokenized if any(y != -100 for y in t[1])], cfg.anchor_weight, cfg.anchor_batch_size,
                    tokenizer.pad_token_id, random.Random(seed + rank()),  # N processes draw different rows
                    shared_prefix=shared_prefix.usable(model))
    anchor.base_logp = base_logprobs(anchor, model)
    return anchor


# The retrain job runs SFT, then DPO, in one process on the same anchor rows (when both recipes
# cut them alike): the base's log-probs of the last call are kept for the next one.
_LAST_BASE_LOGP: dict = {}


def base_logprobs(anchor: Anchor, model, batch_size: int = 8) -> list | None:
    """The base's log-probs at each anchor row's answer positions (on the CPU), rows with equal
    ids computed once; None when they would take more than BASE_LOGP_MAX_BYTES. The same rows
    of the same base as the previous call: that call's result."""
    import torch
    from peft import PeftModel

    from kaizenlm.retrain.training import log

    key = _base_logp_key(anchor, model.get_base_model() if isinstance(model, PeftModel) else model)
    if _LAST_BASE_LOGP.get("key") == key:
        log.info("anchor: the base's log-probs of the previous recipe reused (same rows, same base)")
        return _LAST_BASE_LOGP["logp"]
    _LAST_BASE_LOGP.clear()
    unique = list({tuple(ids): i for i, (ids, _) in enumerate(anchor.rows)}.values())
    vocab = model.get_output_embeddings().weight.shape[0]
    size = sum(sum(y != -100 for y in anchor.rows[i][1]) for i in unique) * vocab * 4
    if size > BASE_LOGP_MAX_BYTES:
        log.info("anchor: the base's log-probs would take %.1f GB; computing them at every step", size / 2**30)
        return None
    device, training = next(model.parameters()).device, model.training
    by_ids: dict[tuple, object] = {}
    model.eval()
    try:
        with torch.no_grad(), model.disable_adapter() if isinstance(model, PeftModel) else contextlib.nullcontext():
            for start in range(0, len(unique), batch_size):
                picks = unique[start:start + batch_size]
                ids, labels, mask = anchor.batch(picks, device)
                keep = answer_positions(labels)
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=keep).logits
                per_row = torch.log_softmax(logits.float(), -1).cpu().split(keep.sum(1).tolist())
                by_ids.update({tuple(anchor.rows[i][0]): lp for i, lp in zip(picks, per_row, strict=True)})
    finally:
        model.train(training)
    log.info("anchor: the base's log-probs of %d rows computed once (%.0f MB)", len(unique), size / 2**20)
    logp = [by_ids[tuple(ids)] for ids, _ in anchor.rows]
    _LAST_BASE_LOGP.update(key=key, logp=logp)
    return logp


def _base_logp_key(anchor: Anchor, base) -> str:
    """The anchor rows, the base's path and dtype, and a fingerprint of its output layer's weights."""
    import hashlib

    head = base.get_output_embeddings().weight
    parts = [anchor.rows, str(getattr(base.config, "_name_or_path", "")), str(head.dtype), list(head.shape),
             float(head.detach().double().sum())]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _tokenize(tokenizer, row: dict, chat: bool, max_length: int, answer_tokens: int = 0) -> tuple[list[int], list[int]]:
    """Input ids and labels (prompt masked), cut to max_length and to the first answer_tokens
    answer tokens when that is > 0."""
    from kaizenlm.base.model import as_messages

    if chat:
        messages = as_messages(row["messages"])
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": row["response"]}],
                                             tokenize=False)
    else:
        prompt, full = row["messages"], f"{row['messages']} {row['response']}"
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    f_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    cut = min(max_length, len(p_ids) + answer_tokens) if answer_tokens > 0 else max_length
    f_ids = f_ids[:cut]
    return f_ids, ([-100] * len(p_ids) + f_ids[len(p_ids):])[:max_length]


class AnchorLoss:
    """Mixin for a TRL trainer: in training steps, adds anchor.weight x mean KL(p_base || p_model)
    over the answer tokens of anchor.batch_size anchor rows. p_base is the same network with
    its adapters disabled, under no_grad. The logged train `loss` stays the trainer's own loss;
    the anchor's KL is logged as `anchor_kl` (its mean over the micro-batches since the last
    log, as TRL averages its own metrics), so the loss-gap monitor and early stopping (on the
    plain evaluation loss) read the same quantities as without the anchor."""

    anchor: Anchor | None = None
    _anchor_kls: list[float] = []  # KL of each training micro-batch since the last training log
    _anchor_terms: list[float] = []  # weight x KL of each since the last log of a train `loss`

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.anchor is None or not model.training or return_outputs:
            return loss
        kl = self._anchor_kl(model)
        self.anchor.last_kl = round(float(kl.detach()), 5)
        # New lists, never appends: the class attributes stay empty for every instance.
        self._anchor_kls = [*self._anchor_kls, self.anchor.last_kl]
        # Each micro-batch adds its share, so one optimizer step carries weight x KL in all.
        self._anchor_terms = [*self._anchor_terms, self.anchor.weight * self.anchor.last_kl]
        return loss + self.anchor.weight * kl / self.args.gradient_accumulation_steps

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Trainer.log, public and meant to be overridden: adds `anchor_kl` to a training log
        (the trainer logs in train mode during training, in eval mode after an evaluation) and
        takes the anchor's part out of the logged `loss`, before the trainer records the log."""
        if self.model.training and self._anchor_kls:
            logs["anchor_kl"] = sum(self._anchor_kls) / len(self._anchor_kls)
            self._anchor_kls = []
        if "loss" in logs and self._anchor_terms:  # the mean step loss since the last log, minus the anchor's part
            logs["loss"] -= sum(self._anchor_terms) / len(self._anchor_terms)
            self._anchor_terms = []
        super().log(logs, start_time)

    def _anchor_kl(self, model):
        import torch

        device = next(model.parameters()).device
        batch, picks = self.anchor.draw(device)
        # Logits only where an answer token is predicted: the LM head over a 49k vocabulary is
        # most of a small model's cost, and prompts are half the tokens.
        keep = answer_positions(batch.pop("labels"))
        logp = torch.log_softmax(model(**batch, use_cache=False, logits_to_keep=keep).logits.float(), -1)
        if self.anchor.base_logp is not None:
            base_logp = torch.cat([self.anchor.base_logp[i] for i in picks]).to(device)
        else:
            with torch.no_grad(), self.accelerator.unwrap_model(model).disable_adapter():
                base_logits = model(**batch, use_cache=False, logits_to_keep=keep).logits
            base_logp = torch.log_softmax(base_logits.float(), -1)
        return (base_logp.exp() * (base_logp - logp)).sum(-1).mean()
