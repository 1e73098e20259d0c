"""Knowledge: the knowledge versions (FAISS indexes), their coverage of recent questions,
and the clusters of questions no document covers (what to write next)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from kaizenlm.dashboard import charts, ui

REFRESH = ("Put documents (.md, .txt, .jsonl) in $KAIZEN_HOME/docs (or `knowledge.docs_dir`) and run "
           "`kaizen knowledge refresh` or `kaizen jobs run weekly`; the weekly tier also does it on its cron.")
SERVING_ALIAS = "knowledge"  # the alias the gateways retrieve from (kaizenlm.knowledge.refresh)


def versions_table(versions: list[dict]) -> None:
    rows = []
    for v in reversed(versions):
        m = v.get("metrics") or {}
        rows.append({"version": v["version_id"], "aliases": ", ".join(v.get("aliases") or []),
                     "created": ui.when(v.get("created_at")), "documents": m.get("documents"),
                     "chunks": m.get("chunks"), "new docs": m.get("documents_new"),
                     "changed docs": m.get("documents_changed"), "removed docs": m.get("documents_removed"),
                     "index": m.get("index_type"), "coverage": m.get("coverage"),
                     "questions": m.get("coverage_questions")})
    ui.table(rows, key="knowledge_versions")
    frame = pd.DataFrame([{"version": r["version"], "coverage": r["coverage"]} for r in reversed(rows)])
    long = charts.long_form(frame, "version", {"coverage": "share of questions covered"})
    if len(long) > 0:
        st.altair_chart(charts.lines(long, "version", "Coverage per version", "share", x_type="N", domain=(0, 1),
                                     sort=list(frame["version"])), width="stretch")


def coverage_report(api, version_id: str) -> None:
    report = ui.load(lambda: api.knowledge_coverage(version_id), f"No coverage report for {version_id}.",
                     "The knowledge refresh writes one with each version; run `kaizen knowledge refresh`.")
    if report is None:
        return
    cols = st.columns(3)
    cols[0].metric("Covered", ui.number(report.get("share_covered"), "{:.0%}"))
    cols[1].metric("Questions", ui.number(report.get("n"), "{:,}"), help="Recent user questions at build time")
    cols[2].metric("Threshold", ui.number(report.get("threshold"), "{:.2f}"),
                   help="A question is covered when its best chunk has at least this cosine similarity")
    clusters = report.get("uncovered_clusters") or []
    st.subheader("Uncovered question clusters")
    if not clusters:
        if report.get("n"):
            st.success("Every recent question is covered.", icon=":material/check_circle:")
        else:
            ui.empty_state("No user questions were seen before this version was built.",
                           "Coverage needs traffic from the last `knowledge.coverage_days` days; refresh again later.")
        return
    st.caption("Largest first: write a document for each, then refresh.")
    ui.table([{"questions": c.get("size"), "examples": " · ".join(c.get("examples") or []),
               "nearest document": c.get("nearest_doc_id"), "its score": c.get("nearest_score")} for c in clusters],
             key="knowledge_clusters")


st.title("Knowledge")
ui.flash()
api = ui.api()
versions = ui.load(lambda: api.versions(kind="knowledge"), "This controller has no registry API.",
                   "Upgrade kaizenlm on the controller.")
if versions is not None and not versions:
    ui.empty_state("No knowledge version yet.", REFRESH)
elif versions:
    versions_table(versions)
    ids = [v["version_id"] for v in reversed(versions)]
    serving = next((v["version_id"] for v in versions if SERVING_ALIAS in (v.get("aliases") or [])), ids[0])
    chosen = st.selectbox("Coverage report of", ids, index=ids.index(serving), key="knowledge_version")
    coverage_report(api, chosen)
