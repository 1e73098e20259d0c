"""From logged feedback to training data: PII scrubbing, quality rules, near-duplicates, curation,
DPO pairs, the replay mix, content-addressed Parquet snapshots and the right to be forgotten."""
