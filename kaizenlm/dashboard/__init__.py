"""The Streamlit dashboard. It reads only the controller's HTTP API and owns no state."""
