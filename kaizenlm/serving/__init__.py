"""Answering chat: the OpenAI-compatible chat endpoint, model backends (local transformers + peft,
or any OpenAI-compatible upstream), the turn shipper and retrieval into prompts."""
