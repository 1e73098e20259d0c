"""LoRA SFT and DPO recipes on a tiny embedded base: they train, write every artifact,
resume from checkpoints, stop cleanly on NaN, and apply tiny overrides only where asked."""

import json
import random
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from retrain_helpers import FAST_RUN, build_tiny_base, dpo_cfg, sft_cfg
from safetensors.torch import load_file, save_file

from kaizenlm.base.embedded import EMBEDDED_NAME
from kaizenlm.config import ConfigError, LoraDPOConfig, LoraSFTConfig
from kaizenlm.demo.domain import build_domain
from kaizenlm.retrain import lora_dpo, lora_sft, training
from kaizenlm.retrain.monitoring import HealthMonitor, NonFiniteLossError

pytestmark = pytest.mark.integration  # trains LoRA adapters on a tiny base (seconds each)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return build_tiny_base(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def domain():
    return build_domain(0)


def sft_rows(domain, n=32):
    return [{"prompt": r["prompt"], "response": r["response"]} for r in domain.train_rows()[:n]]


def dpo_rows(domain, n=32):
    rng = random.Random(0)
    return [{"prompt": r["prompt"], "chosen": r["response"], "rejected": domain.wrong_answer(domain.fact(r["qid"]), rng),
             "source": "test"} for r in domain.train_rows()[:n]]


def assert_run_artifacts(run_dir):
    adapter = run_dir / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    assert not (adapter / "ref").exists()  # only the trained adapter is saved
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "train.log").stat().st_size > 0
    assert list((run_dir / "checkpoints").glob("checkpoint-*"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] > 0 and metrics["final_train_loss"] is not None and metrics["grad_norm_mean"] > 0
    assert metrics["final_loss_gap"] is not None and isinstance(metrics["warnings"], list)
    assert metrics["train_loss"] == metrics["final_train_loss"] and metrics["train_seconds"] > 0
    return metrics


def test_sft_trains_the_adapter_from_a_parquet_snapshot(base_dir, domain, tmp_path):
    rows = sft_rows(domain)
    # The snapshot shape: prompt is a list of chat messages (system + user).
    table = pa.Table.from_pylist([{"prompt": [{"role": "system", "content": "You are a helpful assistant."},
                                              {"role": "user", "content": r["prompt"]}],
                                   "response": r["response"]} for r in rows])
    pq.write_table(table, tmp_path / "sft_train.parquet")
    metrics = lora_sft.train_sft(base_dir, tmp_path / "sft_train.parquet", tmp_path / "sft", sft_cfg(), FAST_RUN)
    assert_run_artifacts(tmp_path / "sft")
    assert metrics["train_rows"] + metrics["val_rows"] == len(rows) and metrics["val_rows"] > 0
    weights = load_file(tmp_path / "sft" / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    # LoRA B starts at zero: non-zero B means training moved the adapter.
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)
    config = json.loads((tmp_path / "sft" / "adapter" / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"q_proj", "v_proj"}  # the default: only the embedded base gets all-linear


def test_sft_in_bf16_keeps_the_adapter_in_fp32_and_learns(base_dir, domain, tmp_path):
    """What "auto" picks on a CPU with AVX512-BF16 or AMX (and on a bf16 GPU): bf16 weights with
    autocast, the LoRA weights and their optimizer in fp32 (forced here, whatever the CPU)."""
    import dataclasses

    metrics = lora_sft.train_sft(base_dir, sft_rows(domain), tmp_path / "sft", sft_cfg(epochs=3.0),
                                 dataclasses.replace(FAST_RUN, precision="bf16"))
    curve = [loss for _, loss in metrics["train_loss_curve"]]
    assert len(curve) >= 2 and curve[-1] < curve[0]  # it learnt
    weights = load_file(tmp_path / "sft" / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and all(v.dtype == torch.float32 and v.abs().sum() > 0 for v in lora_b)


def test_kl_anchor_trains_towards_the_base_and_logs_its_kl_apart(base_dir, domain, tmp_path):
    from kaizenlm.demo.general import general_skills
    from kaizenlm.retrain import anchor

    pool = [{"messages": [{"role": "user", "content": r["prompt"]}], "response": r["response"], "skill": r["skill"]}
            for r in general_skills(0)[0][:40]]
    cfg = sft_cfg(anchor_weight=5.0, anchor_batch_size=4)
    rows = anchor.select(pool, set(), cfg, seed=0)
    assert any(r["response"] is None for r in rows)  # perturbed copies: the base answers them first
    metrics = lora_sft.train_sft(base_dir, sft_rows(domain), tmp_path / "sft", cfg, FAST_RUN, anchor_rows=rows)
    assert_run_artifacts(tmp_path / "sft")
    assert 0 < metrics["anchor_rows"] <= len(rows)
    assert metrics["anchor_kl_last"] > 0  # the adapter moved the model away from the base on general prompts
    weights = load_file(tmp_path / "sft" / "adapter" / "adapter_model.safetensors")
    assert all(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)  # training moved the adapter
    state = json.loads(max((tmp_path / "sft" / "checkpoints").glob("checkpoint-*/trainer_state.json"),
                           key=lambda p: int(p.parent.name.split("-")[1])).read_text())
    train_logs = [e for e in state["log_history"] if "loss" in e]
    assert train_logs and all("anchor_kl" in e for e in train_logs)
    assert train_logs[-1]["anchor_kl"] > 0  # logged apart, and non-zero once the adapter moved (LoRA B starts at 0)
    assert not any("anchor_kl" in e for e in state["log_history"] if "eval_loss" in e)  # a training metric only


def test_the_logged_train_loss_leaves_out_the_anchor_term():
    from kaizenlm.retrain.anchor import AnchorLoss

    class Logged:
        def log(self, logs, start_time=None):
            self.logs = logs

    class Trainer(AnchorLoss, Logged):
        model = torch.nn.Linear(1, 1)  # in train mode, as while training

    trainer = Trainer()
    trainer._anchor_kls = [0.1, 0.06]  # KL of the two steps since the last log
    trainer._anchor_terms = [0.5, 0.3]  # weight x KL of the two steps since the last log
    trainer.log({"loss": 1.0, "grad_norm": 0.4})
    assert trainer.logs["loss"] == pytest.approx(0.6) and trainer._anchor_terms == []
    assert trainer.logs["anchor_kl"] == pytest.approx(0.08) and trainer._anchor_kls == []
    trainer.model.eval()
    trainer._anchor_kls = [0.2]  # an evaluation's log leaves the KL for the next training log
    trainer.log({"eval_loss": 2.0})
    assert trainer.logs == {"eval_loss": 2.0} and trainer._anchor_kls == [0.2]


@pytest.mark.slow  # two training runs: ~10 s alone, 15-45 s on the shared 2-core machine
def test_dpo_on_top_of_sft_changes_the_adapter(base_dir, domain, tmp_path):
    lora_sft.train_sft(base_dir, sft_rows(domain), tmp_path / "sft", sft_cfg(), FAST_RUN)
    metrics = lora_dpo.train_dpo(base_dir, tmp_path / "sft" / "adapter", dpo_rows(domain), tmp_path / "dpo",
                                 dpo_cfg(), FAST_RUN)
    assert_run_artifacts(tmp_path / "dpo")
    assert metrics["method"] == "lora_dpo" and metrics["eval_reward_margin"] is not None
    assert metrics["pref_margin_after"] > metrics["pref_margin_before"]  # chosen answers gained on rejected ones
    before = load_file(tmp_path / "sft" / "adapter" / "adapter_model.safetensors")
    after = load_file(tmp_path / "dpo" / "adapter" / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    changed = [k for k in before if "lora" in k and not torch.equal(before[k], after[k])]
    assert changed, "DPO left every LoRA weight as the SFT adapter had it"


def test_dpo_max_pairs_trains_on_a_sample_of_the_pairs(base_dir, domain, tmp_path):
    lora_sft.train_sft(base_dir, sft_rows(domain), tmp_path / "sft", sft_cfg(epochs=1.0), FAST_RUN)
    pairs = dpo_rows(domain)
    metrics = lora_dpo.train_dpo(base_dir, tmp_path / "sft" / "adapter", pairs, tmp_path / "dpo",
                                 dpo_cfg(epochs=1.0, max_pairs=8, val_fraction=0.0), FAST_RUN)
    assert len(pairs) > 8 and metrics["train_pairs"] == 8 and metrics["steps"] == 1  # 8 pairs, batch 8
    with pytest.raises(ConfigError, match="dpo.max_pairs"):
        LoraDPOConfig(max_pairs=-1)


@pytest.mark.slow  # two training runs: ~10 s alone, 15-45 s on the shared 2-core machine
def test_rerun_resumes_from_the_last_checkpoint(base_dir, domain, tmp_path):
    first = lora_sft.train_sft(base_dir, sft_rows(domain), tmp_path / "run", sft_cfg(epochs=1.0), FAST_RUN)
    assert first["resumed_from"] is None
    # A newer checkpoint the run was killed while saving (trainer_state.json comes last) is skipped.
    saved = tmp_path / "run" / "checkpoints" / f"checkpoint-{first['steps']}"
    half = saved.with_name(f"checkpoint-{first['steps'] + 1}")
    shutil.copytree(saved, half)
    (half / "trainer_state.json").write_text('{"global_step": ')
    second = lora_sft.train_sft(base_dir, sft_rows(domain), tmp_path / "run", sft_cfg(epochs=2.0), FAST_RUN)
    assert second["resumed_from"].endswith(f"checkpoint-{first['steps']}")
    assert second["steps"] == 2 * first["steps"]


def test_resume_skips_and_removes_checkpoints_a_crash_left_half_written(tmp_path):
    root = tmp_path / "checkpoints"
    for step, state in [(2, '{"global_step": 2}'), (4, '{"global_step": 4}'), (6, None), (8, '{"global_st')]:
        (root / f"checkpoint-{step}").mkdir(parents=True)
        (root / f"checkpoint-{step}" / "adapter_model.safetensors").write_bytes(b"weights")
        if state is not None:
            (root / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (root / "checkpoint-10.tmp").mkdir()  # not a checkpoint name
    assert training.last_checkpoint(root) == str(root / "checkpoint-4")
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-10.tmp", "checkpoint-2", "checkpoint-4"]
    assert training.last_checkpoint(tmp_path / "none") is None
    shutil.rmtree(root / "checkpoint-2")
    shutil.rmtree(root / "checkpoint-4")
    assert training.last_checkpoint(root) is None


def test_nan_loss_stops_the_run_with_a_clear_message(base_dir, domain, tmp_path):
    broken = tmp_path / "broken-base"
    shutil.copytree(base_dir, broken)
    weights = load_file(broken / "model.safetensors")
    name = next(k for k in weights if "mlp.down_proj" in k)
    weights[name] = torch.full_like(weights[name], float("nan"))  # a corrupted checkpoint, for real
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(NonFiniteLossError, match=r"became nan at step \d+.*No adapter was saved"):
        lora_sft.train_sft(broken, sft_rows(domain), tmp_path / "run", sft_cfg(), FAST_RUN)
    assert not (tmp_path / "run" / "adapter").exists()
    assert "became nan" in (tmp_path / "run" / "train.log").read_text()


def test_embedded_overrides_apply_only_to_untouched_keys_of_the_embedded_base(base_dir, tmp_path):
    embedded = tmp_path / "embedded-copy"
    shutil.copytree(base_dir, embedded)
    (embedded / "kaizen_base.json").write_text(json.dumps({"name": EMBEDDED_NAME}))  # what convert_embedded writes
    cfg = lora_sft.resolve_config(LoraSFTConfig(), embedded)
    assert cfg.learning_rate == lora_sft.EMBEDDED_OVERRIDES["learning_rate"] != LoraSFTConfig().learning_rate
    assert cfg.target_modules == lora_sft.ALL_LINEAR
    mine = lora_sft.resolve_config(LoraSFTConfig(learning_rate=1e-4), embedded)
    assert mine.learning_rate == 1e-4 and mine.max_length == lora_sft.EMBEDDED_OVERRIDES["max_length"]
    assert lora_sft.resolve_config(LoraSFTConfig(), base_dir) == LoraSFTConfig()  # any other model: the defaults
    assert LoraSFTConfig().target_modules == ["q_proj", "v_proj"] and LoraSFTConfig().learning_rate == 3e-5
    dpo = lora_dpo.resolve_config(LoraDPOConfig(), embedded)
    assert dpo.sft_loss_weight == 1.0 and lora_dpo.resolve_config(LoraDPOConfig(), base_dir) == LoraDPOConfig()
    assert cfg.anchor_weight == lora_sft.EMBEDDED_OVERRIDES.get("anchor_weight", 0.0)
    assert LoraSFTConfig().anchor_weight == LoraDPOConfig().anchor_weight == 0.0


@pytest.mark.parametrize("n_rows,min_steps,max_epochs,epochs", [
    (68, 45, 8.0, 5.0),    # the demo's --short snapshot: 9 steps per epoch, 5 passes reach 45 steps
    (384, 60, 8.0, 3.0),   # enough rows: epochs as given
    (16, 60, 8.0, 8.0),    # 2 steps per epoch: capped at max_epochs
    (68, 60, 1.0, 3.0),    # max_epochs never lowers epochs
    (68, 0, 8.0, 3.0),     # min_steps 0: off
])
def test_min_steps_raises_epochs_for_small_snapshots(n_rows, min_steps, max_epochs, epochs):
    cfg = LoraSFTConfig(epochs=3.0, batch_size=8, min_steps=min_steps, max_epochs=max_epochs)
    assert lora_sft._setup_epochs(cfg, n_rows, {"processes": 1}).epochs == epochs
    assert lora_sft._setup_epochs(cfg, n_rows * 2, {"processes": 2}).epochs == epochs  # steps count all processes


class _State:
    def __init__(self, step):
        self.global_step = step


class _Control:
    should_training_stop = False


def test_health_monitor_warns_on_gap_and_grad_norm_and_stops_on_nan():
    monitor = HealthMonitor(max_loss_gap=0.05, grad_norm_min=0.1, grad_norm_max=1.0, run_name="t")
    control = _Control()
    monitor.on_log(None, _State(1), control, logs={"loss": 1.0, "grad_norm": 0.5})
    monitor.on_log(None, _State(2), control, logs={"eval_loss": 1.02})
    assert monitor.warnings == [] and monitor.loss_gaps[-1][1] == pytest.approx(0.02)
    monitor.on_log(None, _State(3), control, logs={"loss": 0.5, "grad_norm": 3.0})
    monitor.on_log(None, _State(4), control, logs={"eval_loss": 0.7})
    assert [w.split(":")[0] for w in monitor.warnings] == ["grad_norm out of range", "loss gap"]
    assert not control.should_training_stop
    monitor.on_log(None, _State(5), control, logs={"loss": float("nan")})
    assert control.should_training_stop and monitor.non_finite == "loss became nan at step 5"
    summary = monitor.summary()
    assert summary["max_loss_gap"] == pytest.approx(0.2) and summary["grad_norm_max"] == 3.0
