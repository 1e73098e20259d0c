"""Training better models: the base model, the LoRA SFT and DPO recipes with the KL anchor
against forgetting, training health checks, and the monthly retrain job."""
