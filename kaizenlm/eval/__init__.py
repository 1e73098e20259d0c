"""Evaluating a model version: evaluation suites (data the job is given), scores for free-form
answers, and the gates a candidate must pass before it may serve users."""
