"""Turning data into better models: the base model, LoRA SFT/DPO recipes, evaluation,
knowledge refresh, the quarterly review, the scheduler and the job runner."""
