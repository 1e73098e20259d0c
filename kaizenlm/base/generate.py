"""Greedy, batched generation with any base (+ adapter): what evaluation, the general answers
and the KL anchor's missing answers use. (The gateway's backends generate on their own:
they stream and serve many adapters at once.)"""

from __future__ import annotations

from kaizenlm.base.model import as_messages


def prompt_text(tokenizer, prompt: str) -> str:
    if tokenizer.chat_template is not None:
        return tokenizer.apply_chat_template(as_messages(prompt), add_generation_prompt=True, tokenize=False)
    return prompt


def generate_answers(model, tokenizer, prompts: list[str], max_new_tokens: int = 32, batch_size: int = 32) -> list[str]:
    """Greedy answers, batched with left padding; special tokens and surrounding space removed."""
    return [text for text, _ in generate_with_ends(model, tokenizer, prompts, max_new_tokens, batch_size)]


def generate_with_ends(model, tokenizer, prompts: list[str], max_new_tokens: int = 32,
                       batch_size: int = 32) -> list[tuple[str, bool]]:
    """generate_answers, each with whether the model ended it (False: cut at max_new_tokens)."""
    import torch

    answers: list[tuple[str, bool]] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    try:
        for i in range(0, len(prompts), batch_size):
            texts = [prompt_text(tokenizer, p) for p in prompts[i:i + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            width = enc["input_ids"].shape[1]
            answers += [(tokenizer.decode(row[width:], skip_special_tokens=True).strip(),
                         bool((row[width:] == tokenizer.eos_token_id).any())) for row in out]
    finally:
        tokenizer.padding_side = side
    return answers


