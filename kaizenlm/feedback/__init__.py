"""What users tell us: event schemas, the gateway's collector routes, the feedback widget and
the SDK client; later also rewards, curation and dataset snapshots built from that feedback."""
