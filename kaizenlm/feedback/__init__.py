"""What users tell us: the gateway's collector routes, the feedback widget, the SDK client,
and the per-turn reward computed from explicit and implicit feedback."""
