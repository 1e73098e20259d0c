"""Training at scale, the parts that need no process: retrain.processes and friends (config,
`kaizen retrain --processes`, the admin API), the accelerate launch command, and the speed
choices of the recipes (the LM head that scores only answer positions, the variable-length
attention wrapper, padding-free truncation) computing the same numbers as the slow paths."""

from __future__ import annotations

import threading

import pytest
import torch

from kaizenlm import config as config_mod
from kaizenlm.config import ConfigError, RetrainConfig
from kaizenlm.retrain import launch, speed, training

# ---------------------------------------------------------------- configuration and CLI


@pytest.mark.parametrize("value,expected", [(1, 1), (4, 4), ("2", 2), ("auto", "auto")])
def test_processes_accepts_a_count_or_auto(value, expected):
    assert RetrainConfig(processes=value).processes == expected
    assert config_mod.from_dict({"retrain": {"processes": value}}).retrain.processes == expected


@pytest.mark.parametrize("field,value,key", [
    ("processes", 0, "retrain.processes"), ("processes", "two", "retrain.processes"),
    ("processes", True, "retrain.processes"), ("padding_free", "yes", "retrain.padding_free"),
    ("attention", "flash", "retrain.attention"), ("accelerate_config", "fsdp.txt", "retrain.accelerate_config"),
])
def test_bad_training_scale_keys_name_the_key(field, value, key):
    with pytest.raises(ConfigError, match=key):
        RetrainConfig(**{field: value})


def test_with_overrides_validates_like_the_file():
    cfg = config_mod.Config()
    assert config_mod.with_overrides(cfg, {"retrain": {"processes": "3"}}).retrain.processes == 3
    assert cfg.retrain.processes == 1  # a copy
    with pytest.raises(ConfigError, match="retrain.processes"):
        config_mod.with_overrides(cfg, {"retrain": {"processes": -2}})
    with pytest.raises(ConfigError, match="retrain.nope"):
        config_mod.with_overrides(cfg, {"retrain": {"nope": 1}})


def test_kaizen_retrain_refuses_bad_processes_with_exit_2(tmp_path, monkeypatch, capsys):
    from kaizenlm.cli import main

    monkeypatch.setenv("KAIZEN_HOME", str(tmp_path))
    assert main(["retrain", "--processes", "0"]) == 2
    assert "--processes" in capsys.readouterr().err


def test_admin_api_runs_the_monthly_tier_with_this_runs_processes(tmp_path):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from kaizenlm.ingest.store import connect
    from kaizenlm.jobs import api as jobs_api

    cfg = config_mod.from_dict({"paths": {"home": str(tmp_path / "home")}})
    db = connect(cfg.duckdb_path)
    seen, done = [], threading.Event()

    def monthly(ctx):
        seen.append(ctx.cfg.retrain.processes)
        done.set()
        return {}

    app = FastAPI()
    app.state.cfg, app.state.db = cfg, db
    jobs_api.install(app, {"weekly": lambda ctx: {}, "monthly": monthly, "quarterly": lambda ctx: {}})
    client = TestClient(app)
    headers = {"Authorization": f"Bearer {cfg.auth.admin_key}"}
    bad = client.post("/admin/v1/jobs/monthly/run", headers=headers, json={"processes": 0})
    assert bad.status_code == 422 and "retrain.processes" in bad.json()["detail"]
    assert client.post("/admin/v1/jobs/weekly/run", headers=headers, json={"processes": 2}).status_code == 422
    assert client.post("/admin/v1/jobs/monthly/run", headers=headers, json={"processes": "2"}).status_code == 202
    assert done.wait(10) and app.state.scheduler.wait(10)
    assert seen == [2] and cfg.retrain.processes == 1  # this run only
    db.close()


# ---------------------------------------------------------------- the launch


def test_launch_command_is_ddp_unless_an_accelerate_config_is_named(tmp_path):
    target = ["-m", "kaizenlm.retrain.launch", "call.json"]
    command = launch.launch_command(3, RetrainConfig(), target)
    assert command[1:3] == ["-m", "accelerate.commands.launch"] and command[-3:] == target
    assert command[command.index("--num_processes") + 1] == "3" and "--multi_gpu" in command
    fsdp = tmp_path / "fsdp.yaml"
    fsdp.write_text("distributed_type: FSDP\n")
    command = launch.launch_command(2, RetrainConfig(accelerate_config=str(fsdp)), target)
    assert command[command.index("--config_file") + 1] == str(fsdp) and "--multi_gpu" not in command
    with pytest.raises(ValueError, match="retrain.accelerate_config.*does not exist"):
        launch.launch_command(2, RetrainConfig(accelerate_config=str(tmp_path / "missing.yaml")), target)


def test_processes_auto_counts_gpus_and_a_worker_never_launches_again(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert launch.wanted_processes(RetrainConfig(processes="auto")) == 1
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert launch.wanted_processes(RetrainConfig(processes="auto")) == 4
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launch.should_launch(RetrainConfig(processes=2)) and not launch.should_launch(RetrainConfig())
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert not launch.should_launch(RetrainConfig(processes=2))  # already one of the N
    assert not launch.is_main_process()


def test_cpu_hardware_defaults_to_padding_free_and_shares_the_threads(monkeypatch):
    import trl.trainer.utils as trl_utils

    monkeypatch.setattr(trl_utils, "_use_triton", trl_utils._use_triton)  # undone after the test
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    threads = torch.get_num_threads()
    try:
        monkeypatch.setenv("WORLD_SIZE", "2")
        hw = training.hardware(RetrainConfig(cpu_threads=2))
        assert hw["padding_free"] and not hw["gradient_checkpointing"] and hw["attention"] is None
        assert hw["processes"] == 2 and torch.get_num_threads() == 1
        monkeypatch.delenv("WORLD_SIZE")
        assert not training.hardware(RetrainConfig(padding_free="off"))["padding_free"]
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------- the same numbers, faster


def _tiny_llama(vocab=97):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


def test_scoring_only_labelled_positions_gives_the_same_loss_and_gradients(monkeypatch):
    import trl.trainer.utils as trl_utils

    monkeypatch.setattr(trl_utils, "_use_triton", trl_utils._use_triton)  # undone after the test
    model = _tiny_llama()
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    ids = torch.randint(3, 97, (3, 20))
    labels = ids.clone()
    labels[:, :14] = -100  # a prompt: no loss there

    def loss_and_grad():
        model.zero_grad()
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        out.loss.backward()
        grad = model.model.layers[0].self_attn.q_proj.weight.grad.clone()
        return out.loss.detach(), out.entropy.detach(), out.is_top1, grad

    every = loss_and_grad()
    assert speed.score_labelled_positions_only() and speed.score_labelled_positions_only()  # idempotent
    compact = loss_and_grad()
    torch.testing.assert_close(compact[0], every[0])
    torch.testing.assert_close(compact[1], every[1])
    assert torch.equal(compact[2], every[2])
    torch.testing.assert_close(compact[3], every[3], rtol=1e-4, atol=1e-6)


def _reference_varlen(style: str):
    """A plain-PyTorch kernel with varlen_attn's contract, in the signature of torch 2.10-2.11
    (is_causal) or later (window_size); the wrapper must pick the right keywords."""
    def attend(q, k, v, cu_q, cu_k, max_q, max_k, scale=None, enable_gqa=False, **causal):
        assert causal == ({"is_causal": True} if style == "is_causal" else {"window_size": (-1, 0)})
        out = []
        for start, end in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), strict=True):
            qs, ks, vs = (x[start:end].transpose(0, 1) for x in (q, k, v))
            out.append(torch.nn.functional.scaled_dot_product_attention(
                qs, ks, vs, is_causal=True, scale=scale, enable_gqa=enable_gqa).transpose(0, 1))
        return torch.cat(out)

    if style == "is_causal":
        def kernel(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, is_causal=False, scale=None,
                   enable_gqa=False):
            return attend(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale, enable_gqa, is_causal=is_causal)
    else:
        def kernel(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1)):
            return attend(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale, window_size=window_size)
    return kernel


@pytest.mark.parametrize("style", ["is_causal", "window_size"])
def test_sdpa_varlen_attends_within_each_row_like_a_block_diagonal_mask(monkeypatch, style):
    monkeypatch.setattr(speed, "_varlen_kernel", lambda: _reference_varlen(style))
    lengths = [5, 9, 3]
    total, heads, kv_heads, dim = sum(lengths), 4, 2, 8
    q, k, v = torch.randn(1, heads, total, dim), torch.randn(1, kv_heads, total, dim), torch.randn(1, kv_heads, total, dim)
    cu = torch.tensor([0, 5, 14, 17], dtype=torch.int32)
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = heads // kv_heads, True
    out, _ = speed.sdpa_varlen_attention(module, q, k, v, None, scaling=0.3, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                                         max_length_q=9, max_length_k=9)
    row = torch.repeat_interleave(torch.arange(3), torch.tensor(lengths))
    allowed = (row[:, None] == row[None, :]) & torch.ones(total, total, dtype=torch.bool).tril()
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1), attn_mask=allowed, scale=0.3)
    torch.testing.assert_close(out, expected.transpose(1, 2))
    # the row boundaries can also come from position ids alone
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    again, _ = speed.sdpa_varlen_attention(module, q, k, v, None, scaling=0.3, position_ids=positions)
    torch.testing.assert_close(again, out)


def test_padded_batches_fall_back_to_plain_sdpa():
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 1, True
    q = torch.randn(2, 2, 6, 4)
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool).tril()
    out, _ = speed.sdpa_varlen_attention(module, q, q, q, mask)  # never touches the CUDA kernel
    expected = torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask)
    torch.testing.assert_close(out, expected.transpose(1, 2))


def test_padding_free_rows_are_truncated_to_max_length():
    from datasets import Dataset

    ds = Dataset.from_list([{"input_ids": [1, 2, 3, 4, 5], "completion_mask": [0, 0, 1, 1, 1], "note": "a"},
                            {"input_ids": [1, 2], "completion_mask": [0, 1], "note": "b"}])
    cut = training.truncate_tokenized(ds, 3)
    assert cut["input_ids"] == [[1, 2, 3], [1, 2]] and cut["completion_mask"] == [[0, 0, 1], [0, 1]]
    assert cut["note"] == ["a", "b"]
    assert training.truncate_tokenized(ds, 10) is ds and training.truncate_tokenized(None, 3) is None
