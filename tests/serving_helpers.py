"""Test helpers for serving: a tiny random Llama with a chat-template tokenizer and LoRA
adapters on it (built in about a second, deterministic), an echo upstream in a
subprocess, and registry setup through the controller's admin API."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ECHO_UPSTREAM = Path(__file__).resolve().parent / "echo_upstream.py"

CORPUS = [
    "hello how are you today", "the quick brown fox jumps over the lazy dog", "what is the price of the plan",
    "reset my password please", "thank you very much", "red blue green cat dog bird apple pear plum",
]


def build_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide LlamaForCausalLM with random weights and a BPE tokenizer that has
    the embedded base's chat template. Answers are gibberish but deterministic."""
    import torch
    from tiny_base import train_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(CORPUS * 4, vocab_size=300)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    # Make EOS unlikely so answers have a few tokens (random weights would stop anywhere).
    with torch.no_grad():
        model.model.embed_tokens.weight[tokenizer.eos_token_id].mul_(0.0)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_adapter(base_dir: Path, out_dir: Path, seed: int) -> Path:
    """A LoRA adapter with random (non-zero) weights, so it changes the base's answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    lora = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
                      init_lora_weights=False, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    peft_model.save_pretrained(str(out_dir))
    return Path(out_dir)


def reference_answer(base_dir: Path, adapter_dir: Path | None, messages: list[dict], max_new_tokens: int) -> str:
    """Greedy answer computed the plain way (a fresh model per call): the ground truth."""
    import torch

    from kaizenlm.base.model import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(base_dir, adapter_dir)
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, len(ids):].tolist(), skip_special_tokens=True)


class EchoUpstream:
    """tests/echo_upstream.py in its own process (started by path: any working directory works)."""

    def __init__(self, port: int, log_path: Path):
        self.port = port
        self.url = f"http://127.0.0.1:{port}/v1"
        log = open(log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen([sys.executable, str(ECHO_UPSTREAM), "--port", str(port)],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/models", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError("echo upstream did not start")

    def stats(self) -> dict:
        return httpx.get(self.url + "/stats", timeout=5).json()["requests"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def register(stack, kind: str, src: Path, parent_id: str | None = None, config: dict | None = None) -> str:
    """Register a version through the controller's registry API; returns its id."""
    r = httpx.post(stack.cfg.controller_url + "/admin/v1/registry/versions", headers=stack.admin_headers,
                   json={"kind": kind, "artifact_src_dir": str(src), "parent_id": parent_id, "config": config or {}},
                   timeout=30)
    assert r.status_code == 201, r.text
    return r.json()["version_id"]


def register_base(stack, content: str = "x") -> str:
    """Register a one-file `base` version (what the echo upstream serves needs no weights)."""
    src = stack.home / "src"
    src.mkdir(exist_ok=True)
    (src / "w.txt").write_text(content)
    return register(stack, "base", src)


def promote(stack, version_id: str, alias: str = "champion") -> dict:
    r = httpx.post(stack.cfg.controller_url + f"/admin/v1/registry/aliases/{alias}", headers=stack.admin_headers,
                   json={"version_id": version_id, "reason": "test"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def gateway_routing(stack) -> dict | None:
    r = httpx.get(stack.cfg.gateway_url + "/v1/routing", headers=stack.ingest_headers, timeout=5)
    return r.json() if r.status_code == 200 else None


def wait_gateway(stack, predicate, timeout: float = 15.0, url: str | None = None) -> dict:
    """Poll the gateway's /v1/routing until predicate(routing) holds; returns it."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        r = httpx.get((url or stack.cfg.gateway_url) + "/v1/routing", headers=stack.ingest_headers, timeout=5)
        if r.status_code == 200:
            last = r.json()
            if predicate(last):
                return last
        time.sleep(0.05)
    raise TimeoutError(f"gateway routing never matched; last: {last}")


def drain_until(stack, table: str, n: int, timeout: float = 60.0) -> int:
    """Drain the sink until `table` holds at least n rows (gateways log turns in batches
    up to 100 ms after answering; a loaded CI machine can take seconds); returns the count.
    Fails with the gateway's and controller's log tails when n rows never arrive."""
    deadline = time.monotonic() + timeout
    while True:
        count = stack.drain()[table]
        if count >= n:
            return count
        if time.monotonic() > deadline:
            raise AssertionError(f"{table} holds {count} rows after {timeout:.0f} s, expected {n}\n"
                                 f"gateway log:\n{stack.log_tail('gateway')}\n"
                                 f"controller log:\n{stack.log_tail('controller')}")
        time.sleep(0.2)


async def open_loop(url: str, path: str, make_body, headers: dict, rate: float, seconds: float,
                    connections: int = 64) -> list[tuple]:
    """Open-loop load over raw HTTP/1.1 keep-alive connections (cheap enough that the test
    process is not the bottleneck: httpx costs ~2 ms of CPU per request here). A request is
    due every 1/rate s; returns (sent_at, done_at, status, parsed JSON body or None) per
    request, times from time.monotonic()."""
    import asyncio

    import orjson

    u = httpx.URL(url)
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    queue: asyncio.Queue = asyncio.Queue()
    out: list[tuple] = []

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(u.host, u.port)
        try:
            while (i := await queue.get()) is not None:
                body = orjson.dumps(make_body(i))
                sent = time.monotonic()
                writer.write(f"POST {path} HTTP/1.1\r\nhost: {u.host}\r\ncontent-type: application/json\r\n"
                             f"content-length: {len(body)}\r\n{extra}\r\n".encode() + body)
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line[15:]) for line in head.split(b"\r\n")
                              if line[:15].lower() == b"content-length:")
                data = await reader.readexactly(length)
                status = int(head[9:12])
                out.append((sent, time.monotonic(), status, orjson.loads(data) if status == 200 else data))
        finally:
            writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    t0 = time.monotonic()
    for i in range(int(rate * seconds)):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(i)
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return out


@pytest.fixture
def openai_stack(kaizen_env, tmp_path):
    """A real stack whose gateway serves through the openai backend from an echo upstream
    (import this fixture into a test module to use it)."""
    from conftest import Stack, free_port

    upstream = EchoUpstream(free_port(), tmp_path / "echo.log")
    (tmp_path / "kaizen.toml").write_text(
        f'[serving]\nbackend = "openai"\nupstream_url = "{upstream.url}"\nretries = 2\nretry_backoff_s = 0.01\n',
        encoding="utf-8")
    stack = Stack(kaizen_env)
    stack.upstream = upstream
    try:
        yield stack.start()
    finally:
        stack.stop()
        upstream.stop()
