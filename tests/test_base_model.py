"""The embedded base model: tokenizer + tiny LLaMA, saved as a plain Hugging Face directory."""

import json
import os

import pytest
import torch
from retrain_helpers import TINY_BASE, build_tiny_base
from tiny_base import base_training_rows, encode_chat
from transformers import AutoModelForCausalLM, AutoTokenizer

from kaizenlm import cli
from kaizenlm.demo.domain import build_domain
from kaizenlm.retrain.training import is_embedded_base

pytestmark = pytest.mark.integration  # trains the tiny base model


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return build_tiny_base(tmp_path_factory.mktemp("base"))


def test_build_writes_a_loadable_model_with_a_chat_template(base_dir):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "kaizen_base.json", "build.log"):
        assert (base_dir / name).is_file(), name
    assert not is_embedded_base(base_dir)  # only the converted SmolLM2 gets the embedded recipe overrides
    metrics = json.loads((base_dir / "kaizen_base.json").read_text())
    assert metrics["steps"] == TINY_BASE.steps and metrics["params"] > 0
    tok = AutoTokenizer.from_pretrained(str(base_dir))
    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    assert model.config.num_hidden_layers == 1 and model.config.hidden_size == 32
    assert sum(p.numel() for p in model.parameters()) == metrics["params"]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"},
                {"role": "assistant", "content": "Hi."}]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == "<|bos|><|system|>\nBe brief.<|end|>\n<|user|>\nHello!<|end|>\n<|assistant|>\nHi.<|end|>\n"
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|user|>\nHello!<|end|>\n<|assistant|>\n")
    assert tok.eos_token == "<|end|>" and tok.pad_token == "<|pad|>"
    ids = tok.apply_chat_template(messages[:2], add_generation_prompt=True, tokenize=True, return_dict=False)
    assert tok.decode(ids) == prompt  # byte-level BPE round-trips
    out = model.generate(torch.tensor([ids]), max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > len(ids)


def test_build_is_deterministic(base_dir, tmp_path):
    again = build_tiny_base(tmp_path / "again")
    a = AutoModelForCausalLM.from_pretrained(str(base_dir)).state_dict()
    b = AutoModelForCausalLM.from_pretrained(str(again)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_prompt_tokens_are_masked(base_dir):
    tok = AutoTokenizer.from_pretrained(str(base_dir))
    ids, labels = encode_chat(tok, "Add 2 and 3.", "5", None, 64)
    answer = [t for t in labels if t != -100]
    assert tok.decode(answer) == "5<|end|>\n"  # the newline after EOS is learnt too (TRL trains on it)
    assert len(ids) == len(labels) and labels[0] == -100


def test_base_never_trains_on_domain_facts_or_the_retention_exam():
    domain = build_domain(0)
    train, heldout = base_training_rows(domain, 0, rows_per_skill=40)
    prompts = {r["prompt"] for r in train}
    assert not prompts & {q for f in domain.facts for q in [f.question, *f.paraphrases, *f.exam_paraphrases]}
    assert not prompts & {r["prompt"] for r in heldout}
    assert not prompts & set(domain.out_of_scope_exam)
    assert any(r["skill"] == "refusal" for r in train)


def test_cli_base_show_reads_a_model_directory_and_says_what_to_do_when_there_is_none(base_dir, tmp_path,
                                                                                       monkeypatch, capsys):
    monkeypatch.setenv("KAIZEN_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["base", "show", "--out", str(base_dir), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["base_dir"] == str(base_dir) and shown["marker"]["steps"] == TINY_BASE.steps
    assert cli.main(["base", "show", "--out", str(tmp_path / "nothing")]) == 2
    assert "run `kaizen base build`" in capsys.readouterr().err
    assert os.environ["KAIZEN_HOME"].endswith("home")


@pytest.mark.parametrize(("response", "ended", "expect"), [
    ("Paris", True, "Paris"),  # the model ended it: kept whole, punctuation or not
    ("Water boils at 100 degrees Celsius. At higher altitudes it boils at a lower", False,
     "Water boils at 100 degrees Celsius."),
    ('He said "stop!" and left. Then the', False, 'He said "stop!" and left.'),
    ("Here are some ideas:\n\n1. Oats with berries\n2. Eggs", False, None),  # list numbers are not sentence ends
    ("Try a fruit, e.g. an apple or a", False, None),
    ("The answer is 3.5 apples (roughly). Because", False, "The answer is 3.5 apples (roughly)."),
    ("It costs $3.50 per", False, None),  # a decimal point is not followed by a space
])
def test_a_replay_target_never_stops_mid_sentence(response, ended, expect):
    from kaizenlm.base.general import replay_target

    row = replay_target({"prompt": "q", "skill": "science", "response": response, "ended": ended})
    if expect is None:
        assert row is None
    else:
        assert row["response"] == expect and row["prompt"] == "q" and row.get("trimmed", False) == (expect != response)


def test_general_answers_replay_complete_sentences_and_hold_out_answers_as_given(base_dir, tmp_path, monkeypatch):
    """write_answers' files, with scripted answers in place of the tiny model's gibberish (the
    demo's end-to-end test checks the same on the real model's answers)."""
    from kaizenlm.base import general, generate

    prompts = [f"What is the capital of country number {i}?" for i in range(40)]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p, "skill": "geography"}) + "\n"
                                                    for p in prompts))
    scripted = {p: [("Lyon.", True), ("It is Lyon. It has a river and a", False), ("Lyon, Paris and", False),
                    ("", True)][i % 4] for i, p in enumerate(prompts)}
    monkeypatch.setattr(generate, "generate_with_ends",
                        lambda _m, _t, batch, *_a, **_k: [scripted[p] for p in batch])
    replay, heldout = general.write_answers(base_dir, tmp_path / "home", tmp_path / "prompts.jsonl", 12)
    assert (replay, heldout) == general.answers_paths(
        tmp_path / "home", general.answers_key(base_dir, tmp_path / "prompts.jsonl", 12))
    train, held = general.read_jsonl(replay), general.read_jsonl(heldout)
    # Empty answers are dropped; a cut answer with no complete sentence is not replayed.
    assert {r["prompt"] for r in train} | {r["prompt"] for r in held} == {
        p for i, p in enumerate(prompts) if i % 4 in (0, 1) or (i % 4 == 2 and general.is_held_out(p))}
    for row in held:  # as given
        assert general.is_held_out(row["prompt"]) and (row["response"], row["ended"]) == scripted[row["prompt"]]
    for row in train:
        assert not general.is_held_out(row["prompt"])
        assert row["response"] == {"Lyon.": "Lyon.", "It is Lyon. It has a river and a": "It is Lyon."}[
            scripted[row["prompt"]][0]]
    assert (tmp_path / "home" / "general" / "replay.jsonl").read_bytes() == replay.read_bytes()


def test_the_general_answers_are_cached_per_base_and_per_what_was_asked(tmp_path):
    """Changing [base] general_prompts_path, general_answers or general_max_new_tokens answers anew."""
    from kaizenlm.base import general
    from kaizenlm.config import BaseModelConfig, Config, PathsConfig

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    key = general.answers_key(base, None, 48, 96)
    assert key == general.answers_key(base, None, 48, 96) and key.startswith(general.base_key(base))
    own = tmp_path / "own.jsonl"
    own.write_text(json.dumps({"prompt": "Name a colour.", "skill": "language"}) + "\n")
    others = {general.answers_key(base, None, 48, 64), general.answers_key(base, None, 32, 96),
              general.answers_key(base, own, 48, 96)}
    assert key not in others and len(others) == 3
    cfg = Config(paths=PathsConfig(home=str(tmp_path / "home")), base=BaseModelConfig(general_answers=96))
    assert general.configured_answers_paths(cfg, base) == general.answers_paths(cfg.home, key)
    cfg = Config(paths=PathsConfig(home=str(tmp_path / "home")), base=BaseModelConfig(general_prompts_path=str(own)))
    assert general.configured_answers_paths(cfg, base)[0].name == general.answers_key(base, own, 48, 96) + ".jsonl"


def test_a_converted_base_and_its_registered_copy_share_the_answers_key(tmp_path):
    """The conversion's child answers before the controller registers the copy: the copy must find them."""
    import shutil

    from kaizenlm.base import general
    from kaizenlm.base.model import EMBEDDED_MARKER
    from kaizenlm.registry.artifacts import store_artifacts

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    plain_key = general.base_key(base)  # no marker: a hash of the files
    (base / EMBEDDED_MARKER).write_text(json.dumps({"name": "SmolLM2-135M-Instruct", "content_hash": "ab" * 32}))
    copy, digest = store_artifacts(base, tmp_path / "home")
    assert general.base_key(base) == general.base_key(copy) == "ab" * 8 != plain_key
    # A registered base kaizenlm did not convert: keyed by its content-addressed name.
    other = tmp_path / "other"
    shutil.copytree(base, other)
    (other / EMBEDDED_MARKER).unlink()
    other_copy, other_digest = store_artifacts(other, tmp_path / "home")
    assert general.base_key(other_copy) == other_digest[:16] == general.base_key(other)
