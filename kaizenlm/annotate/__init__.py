"""Human review: the review queue and its assignment with overlap, labels (accept / edit / reject
plus a schema label), inter-rater agreement (Cohen, Fleiss) and Label Studio interchange."""
