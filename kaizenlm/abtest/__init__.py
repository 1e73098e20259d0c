"""Serving and experiments: the A/B router, model backends, always-valid statistics,
and the promotion and rollback decisions built on them."""
