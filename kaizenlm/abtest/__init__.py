"""A/B experiments: routing state on the control topic, always-valid statistics, promotion and
rollback decisions, and the experiments' admin API, client and CLI (`kaizen ab`, `kaizen rollback`)."""
