"""API keys beyond the three in the config: `kaizen keys create|list|revoke` over the keys file
that kaizenlm.auth reads (several keys per scope, stored as digests, reloaded without restart)."""
