"""The kaizenlm dashboard: `kaizen dashboard` runs `streamlit run` on this file.

It reads only the controller's admin API (kaizenlm/dashboard/api_client.py); one page per
file in pages/. The sidebar says which controller it reads and holds the password field
that every action (promote, roll back, stop, run a job) needs. See docs/DASHBOARD.md.
"""

from __future__ import annotations

import streamlit as st

from kaizenlm.dashboard import ui

PAGES = [
    st.Page("pages/overview.py", title="Overview", icon=":material/monitoring:", default=True),
    st.Page("pages/experiments.py", title="Experiments", icon=":material/science:", url_path="experiments"),
    st.Page("pages/models.py", title="Models", icon=":material/deployed_code:", url_path="models"),
    st.Page("pages/training.py", title="Training", icon=":material/model_training:", url_path="training"),
    st.Page("pages/knowledge.py", title="Knowledge", icon=":material/menu_book:", url_path="knowledge"),
    st.Page("pages/feedback.py", title="Feedback explorer", icon=":material/forum:", url_path="feedback"),
    st.Page("pages/jobs.py", title="Jobs", icon=":material/schedule:", url_path="jobs"),
    st.Page("pages/annotate.py", title="Annotate", icon=":material/rate_review:", url_path="annotate"),
]

st.set_page_config(page_title="kaizenlm", page_icon=":material/autorenew:", layout="wide")
st.html("<style>[data-testid='stMainBlockContainer'] {padding-top: 2.5rem}</style>")  # less empty space on top
page = st.navigation(PAGES)
st.sidebar.caption(f"Reading **{ui.api().url}**")
ui.key_sidebar()
page.run()
