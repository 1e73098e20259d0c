"""The base model every adapter is trained on: where it lives, loading a causal LM with its
tokenizer (and an optional LoRA adapter), and the chat-message form of a prompt."""
