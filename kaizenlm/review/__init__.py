"""The quarterly review: a Markdown report with PNG plots over a window of the quarter's data,
experiments and models (`kaizen review`)."""
