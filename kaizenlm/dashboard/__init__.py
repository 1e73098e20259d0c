"""The Streamlit dashboard, which reads only the controller's HTTP API and owns no state,
and the aggregate read routes it needs (mounted by the controller)."""
