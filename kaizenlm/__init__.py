"""kaizenlm: a continuous-learning loop for LLM chat assistants.
Config and CLI live here; each subpackage owns one part of the loop (see docs/ARCHITECTURE.md)."""

__version__ = "0.1.0"
