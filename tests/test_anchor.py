"""The KL anchor's rows: general prompts that are neither SFT rows nor held out, balanced per
skill, with perturbed copies left for the base to answer; the sources they come from; and the KL
term on answer positions."""

import json
import random
from collections import Counter
from types import SimpleNamespace

import pytest

from kaizenlm.config import LoraSFTConfig
from kaizenlm.demo.general import general_skills, write_general_jsonl
from kaizenlm.demo.inputs import demo_suite
from kaizenlm.retrain import anchor


def row(prompt, response, skill=None):
    return {"messages": [{"role": "user", "content": prompt}], "response": response, "skill": skill}


def test_select_excludes_balances_and_adds_perturbed_copies():
    pool = [row(f"Repeat: w{i}", f"w{i}", "repeat") for i in range(6)] + [row("Add 1 and 2.", "3", "add"),
                                                                          row("Add 2 and 2.", "4", "add")]
    cfg = LoraSFTConfig(anchor_weight=5.0, anchor_perturb_copies=2)
    rows = anchor.select(pool, {"Repeat: w0"}, cfg, seed=0)
    originals = [r for r in rows if r["response"] is not None]
    copies = [r for r in rows if r["response"] is None]
    assert "Repeat: w0" not in {anchor.prompt_key(r["messages"]) for r in rows}
    assert Counter(r["skill"] for r in originals) == {"repeat": 5, "add": 5}  # the small skill repeated up to 5
    assert len(copies) == 2 * len(originals)
    original_texts = {anchor.prompt_key(r["messages"]) for r in originals}
    changed = sum(anchor.prompt_key(c["messages"]) not in original_texts for c in copies)
    assert changed >= len(copies) * 0.8  # one word dropped, inserted or replaced (rarely lands on another row)


def test_select_caps_the_pool_and_leaves_rows_without_skills_unbalanced():
    pool = [row(f"Question {i}?", f"Answer {i}.") for i in range(50)]
    cfg = LoraSFTConfig(anchor_weight=5.0, anchor_pool_size=20, anchor_perturb_copies=0)
    rows = anchor.select(pool, set(), cfg, seed=1)
    assert len(rows) == 20 and len({anchor.prompt_key(r["messages"]) for r in rows}) == 20
    assert rows == anchor.select(pool, set(), cfg, seed=1)  # seeded


def test_rows_for_a_replay_file_leave_out_sft_and_evaluation_prompts(tmp_path):
    train, _ = general_skills(0)
    suite = demo_suite(0)
    asked = [{"prompt": r["prompt"], "response": r["reference"], "skill": "asked"}
             for r in suite.general[:20] + suite.domain[:10] + suite.refusal[:10]]
    source = write_general_jsonl(tmp_path / "replay.jsonl", train + asked)  # evaluation prompts in the file too
    sft_rows = [{"prompt": json.dumps([{"role": "user", "content": r["prompt"]}]), "response": r["response"]}
                for r in train[:30]]  # the snapshot's shape: prompt = JSON messages
    rows = anchor.rows_for(str(source), 0, sft_rows, LoraSFTConfig(anchor_weight=5.0), suite.prompts())
    texts = {anchor.prompt_key(r["messages"]) for r in rows}
    assert rows and not texts & {r["prompt"] for r in train[:30]}
    assert not texts & set(suite.prompts())  # no exam, general or out-of-scope exam question
    assert "asked" not in {r["skill"] for r in rows}
    assert len(suite.prompts()) == 144 + 320 + 72
    assert {r["skill"] for r in rows if r["response"] is not None} >= {"repeat", "add", "refusal", "recall"}


def test_a_replay_file_is_an_anchor_source_and_a_missing_one_is_a_clear_error(tmp_path):
    path = tmp_path / "general.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"Say {w}.", "response": w}) for w in ["a", "b", "c"]) + "\n")
    pool = anchor.pool_from_source(str(path))
    assert [r["response"] for r in pool] == ["a", "b", "c"] and all(r["skill"] is None for r in pool)
    with pytest.raises(ValueError, match="does not exist"):
        anchor.pool_from_source(str(tmp_path / "gone.jsonl"))


def test_the_anchor_keeps_the_base_answer_a_replay_target_was_trimmed_from(tmp_path):
    from kaizenlm.base.general import replay_target
    from kaizenlm.datasets.snapshots import load_replay

    cut = {"prompt": "Why is the sky blue?", "skill": "science", "ended": False,
           "response": "Sunlight scatters off air. Blue light scatters the most, so the"}
    row = replay_target(cut)
    path = tmp_path / "replay.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps({"prompt": "Say a.", "response": "a"}) + "\n")
    replay = load_replay(path)  # the SFT target: complete sentences
    assert [r["response"] for r in replay] == ["Sunlight scatters off air.", "a"]
    pool = anchor.pool_from_source(str(path))  # the KL anchor: the base's whole answer
    assert [r["response"] for r in pool] == [cut["response"], "a"] and pool[0]["skill"] == "science"


def test_snapshot_source_reads_the_manifest(tmp_path):
    assert anchor.snapshot_source(tmp_path) is None
    (tmp_path / "manifest.json").write_text(json.dumps({"mix_ratio": {"source": "/data/general.jsonl"}}))
    assert anchor.snapshot_source(tmp_path) == "/data/general.jsonl"


@pytest.mark.parametrize("field,value", [("anchor_weight", -1.0), ("anchor_batch_size", 0),
                                         ("anchor_pool_size", 0), ("anchor_perturb_copies", -1),
                                         ("anchor_answer_tokens", -1), ("min_steps", -1), ("max_epochs", 0.0)])
def test_anchor_config_checks_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"sft.{field}"):
        LoraSFTConfig(**{field: value})


def test_anchor_rows_keep_the_first_answer_tokens_when_capped():
    class WordTokenizer:  # one id per word: the cut is easy to read
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [len(w) for w in text.split()]}

    r = {"messages": "why is the sky blue", "response": "light scatters off the air molecules"}
    ids, labels = anchor._tokenize(WordTokenizer(), r, chat=False, max_length=64)
    assert len(ids) == 11 and [y for y in labels if y != -100] == [5, 8, 3, 3, 3, 9]
    ids, labels = anchor._tokenize(WordTokenizer(), r, chat=False, max_length=64, answer_tokens=2)
    assert ids == [3, 2, 3, 3, 4, 5, 8] and labels == [-100] * 5 + [5, 8]
    ids, labels = anchor._tokenize(WordTokenizer(), r, chat=False, max_length=6, answer_tokens=2)
    assert len(ids) == 6 and labels == [-100] * 5 + [5]  # max_length still wins


def test_anchor_kl_scores_answer_positions_only_and_equals_the_full_computation():
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from kaizenlm.retrain.anchor import Anchor, AnchorLoss

    torch.manual_seed(0)
    net = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=2))
    model = get_peft_model(net, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    rows = [(list(range(1, 9)), [-100] * 4 + list(range(5, 9))), (list(range(10, 16)), [-100] * 2 + list(range(12, 16)))]
    anchor = Anchor(rows, weight=1.0, batch_size=2, pad_id=0, rng=random.Random(0))
    trainer = AnchorLoss()
    trainer.anchor, trainer.accelerator = anchor, SimpleNamespace(unwrap_model=lambda m: m)
    kl = trainer._anchor_kl(model)

    anchor.rng = random.Random(0)  # the same draw, scored over every position
    batch, _ = anchor.draw("cpu")
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    valid = (labels[:, 1:] != -100).float()
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1], -1)
    with torch.no_grad(), model.disable_adapter():
        base_logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1], -1)
    expected = ((base_logp.exp() * (base_logp - logp)).sum(-1) * valid).sum() / valid.sum()
    assert float(kl) > 0 and float(kl) == pytest.approx(float(expected), rel=1e-5)
    kl.backward()  # the KL trains the adapter only
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_" in n)


def test_the_base_log_probs_computed_once_give_the_same_kl_as_the_base_at_every_step():
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from kaizenlm.retrain.anchor import Anchor, AnchorLoss, base_logprobs

    torch.manual_seed(0)
    net = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=2))
    model = get_peft_model(net, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    row_a = (list(range(1, 9)), [-100] * 4 + list(range(5, 9)))
    row_b = (list(range(10, 16)), [-100] * 2 + list(range(12, 16)))
    rows = [row_a, row_b, row_a, (list(range(20, 31)), [-100] * 6 + list(range(26, 31)))]  # a repeated row, as skill balancing makes
    trainer = AnchorLoss()
    trainer.accelerator = SimpleNamespace(unwrap_model=lambda m: m)
    trainer.anchor = Anchor(rows, weight=1.0, batch_size=3, pad_id=0, rng=random.Random(0))
    every_step = [float(trainer._anchor_kl(model)) for _ in range(4)]

    model.train()
    pre = Anchor(rows, weight=1.0, batch_size=3, pad_id=0, rng=random.Random(0))
    pre.base_logp = base_logprobs(pre, model)
    assert model.training  # left as it was
    assert pre.base_logp[0] is pre.base_logp[2] and pre.base_logp[0].shape == (4, 64)  # one tensor per distinct row
    trainer.anchor = pre
    once = [float(trainer._anchor_kl(model)) for _ in range(4)]
    assert once == pytest.approx(every_step, rel=1e-5) and min(once) > 0


def test_the_next_recipe_reuses_the_base_log_probs_of_the_same_rows_and_base():
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from kaizenlm.retrain.anchor import Anchor, base_logprobs

    def base(seed):
        torch.manual_seed(seed)
        return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=2))

    def anchor(rows):
        return Anchor(rows, weight=1.0, batch_size=2, pad_id=0, rng=random.Random(0))

    forwards = []
    sft_base = base(0)
    sft_base.register_forward_hook(lambda *_: forwards.append(1))
    rows = [(list(range(1, 9)), [-100] * 4 + list(range(5, 9))), (list(range(10, 16)), [-100] * 2 + list(range(12, 16)))]
    first = base_logprobs(anchor(rows), sft_base)
    assert len(forwards) == 1
    # DPO: the same base under the SFT adapter (disabled for the base pass), the same rows.
    dpo_model = get_peft_model(sft_base, LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    assert base_logprobs(anchor(rows), dpo_model) is first and len(forwards) == 1
    # Other rows, or another base with other weights: computed anew.
    other_rows = base_logprobs(anchor(rows[:1]), dpo_model)
    assert len(forwards) == 2 and len(other_rows) == 1
    other_base = base_logprobs(anchor(rows[:1]), base(1))
    assert not torch.equal(other_base[0], other_rows[0])
