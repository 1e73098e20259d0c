"""The three-tier schedule: the scheduler (weekly, monthly, quarterly on cron), its run history,
its admin API and `kaizen jobs`."""
