"""Knowledge refresh, retrieval and coverage with the real embedder (all-MiniLM-L6-v2) and
real FAISS indexes on a tiny fixture knowledge base; one refresh runs as a real job."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
import pytest

from kaizenlm import cli
from kaizenlm.config import Config, KnowledgeConfig, PathsConfig
from kaizenlm.ingest.store import connect, insert_events
from kaizenlm.knowledge.chunking import Document, chunk_document, chunk_words, content_hash, load_documents
from kaizenlm.knowledge.coverage import coverage, recall_at_k
from kaizenlm.knowledge.embed import load_embedder
from kaizenlm.knowledge.index import (
    EMBEDDINGS_FILE,
    INDEX_FILE,
    promoted_answers,
    read_chunks,
    recent_questions,
    refresh_knowledge,
)
from kaizenlm.knowledge.refresh import KNOWLEDGE_ALIAS, refresh
from kaizenlm.knowledge.retrieval import NO_CONTEXT, Hit, Retriever, build_prompt, doc_ids_of
from kaizenlm.registry import service

pytestmark = pytest.mark.integration  # the refresh job runs in a child process

KCFG = KnowledgeConfig(chunk_words=40, chunk_overlap=10)
HANDBOOK_WORDS = [f"w{i}" for i in range(100)]  # 100 words -> windows [0:40] [30:70] [60:100]

DOCS = {
    "refunds.md": "# Refund policy\n\nYou can ask for a refund within 30 days of purchase. "
                  "The money goes back to the original card within 5 business days.\n",
    "shipping.md": "# Shipping\n\nStandard shipping takes 5 days and costs 9 dollars. Express shipping takes 2 days.\n",
    "account/passwords.txt": "To reset your password open Settings, choose Security and click Reset password. "
                             "A reset link arrives by e-mail within a few minutes.\n",
    "faq.jsonl": "\n".join([
        json.dumps({"doc_id": "faq/api-limits", "title": "API rate limits",
                    "text": "The API allows 100 requests per minute per key. Going over the limit returns HTTP 429."}),
        json.dumps({"doc_id": "faq/warranty", "title": "Router warranty",
                    "text": "Every router has a two year warranty. A broken router is replaced within 3 days."}),
    ]) + "\n",
    "handbook.md": "# Handbook\n\n" + " ".join(HANDBOOK_WORDS) + "\n",
}


def write_docs(folder: Path, docs: dict[str, str]) -> Path:
    for rel, text in docs.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def embedder():
    return load_embedder()


@pytest.fixture(scope="module")
def kb(tmp_path_factory, embedder) -> dict:
    """The fixture knowledge base built once: {"docs": folder, "dir": artifact, "manifest": ...}."""
    root = tmp_path_factory.mktemp("kb")
    folder = write_docs(root / "docs", DOCS)
    manifest = refresh_knowledge(KCFG, folder, [], None, root / "v1", embedder=embedder)
    return {"root": root, "docs": folder, "dir": root / "v1", "manifest": manifest}


@pytest.fixture(scope="module")
def retriever(kb, embedder) -> Retriever:
    return Retriever(kb["dir"], embedder)


# ---------------------------------------------------------------- chunking


def test_chunk_windows_overlap_and_cover_the_end():
    words = [str(i) for i in range(100)]
    windows = chunk_words(words, size=40, overlap=10)
    assert [(w[0], w[-1]) for w in windows] == [("0", "39"), ("30", "69"), ("60", "99")]
    for a, b in zip(windows, windows[1:], strict=False):
        assert a[-10:] == b[:10]  # consecutive windows share exactly `overlap` words
    # A tail shorter than the step is covered by the last window, not by a tiny extra one.
    assert [(w[0], w[-1]) for w in chunk_words(words[:75], 40, 10)] == [("0", "39"), ("30", "69"), ("60", "74")]
    assert chunk_words(words[:40], 40, 10) == [words[:40]]
    assert chunk_words(words[:41], 40, 10) == [words[:40], words[30:41]]
    assert chunk_words([], 40, 10) == []


def test_chunk_ids_titles_and_hashes():
    doc = Document("guide", "Guide", " ".join(HANDBOOK_WORDS), "guide.md")
    chunks = chunk_document(doc, 40, 10)
    assert [c.chunk_id for c in chunks] == ["guide#0", "guide#1", "guide#2"]
    assert all(c.text.startswith("Guide: ") for c in chunks)  # every chunk says what it is about
    assert chunks[1].text == "Guide: " + " ".join(HANDBOOK_WORDS[30:70])
    assert content_hash("a  b\n c") == content_hash("a b c") != content_hash("a b C")


def test_load_documents_formats_and_bad_records(tmp_path):
    folder = write_docs(tmp_path / "docs", {
        **DOCS,
        "zz.jsonl": '{"doc_id": "ok", "text": "fine"}\nnot json\n{"text": "no id"}\n{"doc_id": "refunds", "text": "dup"}\n',
        "image.png": "not a document",
    })
    loaded = load_documents(folder)
    by_id = {d.doc_id: d for d in loaded.documents}
    assert sorted(by_id) == ["account/passwords", "faq/api-limits", "faq/warranty", "handbook", "ok", "refunds", "shipping"]
    assert by_id["refunds"].title == "Refund policy" and "# Refund policy" not in by_id["refunds"].text
    assert by_id["account/passwords"].title == "" and by_id["faq/warranty"].title == "Router warranty"
    # The first definition in sorted path order wins a duplicate doc_id.
    assert [s.split(":")[0:2] for s in loaded.skipped] == [["zz.jsonl", "2"], ["zz.jsonl", "3"], ["zz.jsonl", "4"]]
    assert "duplicate doc_id 'refunds' (first defined in refunds.md)" in loaded.skipped[2]


# ---------------------------------------------------------------- refresh


def test_full_build_manifest_and_files(kb):
    m = kb["manifest"]
    c = m["counts"]
    assert c["documents"] == 6 and c["chunks"] == 8  # 5 one-chunk documents + 3 handbook chunks
    assert c["chunks_embedded"] == c["chunks_new"] == 8 and c["chunks_removed"] == 0
    assert m["index"]["type"] == "flat_ip" and m["embed_model"].startswith("sentence-transformers/all-MiniLM-L6-v2")
    chunks = read_chunks(kb["dir"])
    assert chunks.column_names == ["chunk_id", "doc_id", "chunk_index", "text", "hash", "source"]
    vectors = np.load(kb["dir"] / EMBEDDINGS_FILE)
    assert vectors.shape == (8, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert faiss.read_index(str(kb["dir"] / INDEX_FILE)).ntotal == 8


def test_incremental_refresh_embeds_only_changed_chunks_and_drops_removed_documents(kb, embedder):
    root = kb["root"]
    changed = dict(DOCS)
    del changed["shipping.md"]  # removed document
    changed["handbook.md"] = "# Handbook\n\n" + " ".join(HANDBOOK_WORDS[:-1] + ["changed"]) + "\n"  # last chunk only
    changed["privacy.md"] = "# Privacy\n\nWe keep audit logs for 90 days and never sell your data.\n"  # new document
    folder = write_docs(root / "docs2", changed)

    m = refresh_knowledge(KCFG, folder, [], kb["dir"], root / "v2", embedder=embedder)
    c = m["counts"]
    assert c["chunks_embedded"] == 2  # the changed handbook chunk + the new privacy chunk
    assert (c["chunks_new"], c["chunks_changed"], c["chunks_removed"], c["chunks_unchanged"]) == (1, 1, 1, 6)
    assert (c["documents_new"], c["documents_changed"], c["documents_removed"], c["documents_unchanged"]) == (1, 1, 1, 4)
    assert "shipping" not in read_chunks(root / "v2").column("doc_id").to_pylist()
    hits = Retriever(root / "v2", embedder).search("How long does express shipping take?", k=8)
    assert "shipping" not in doc_ids_of(hits)

    # The incremental result equals a full build of the same documents.
    full = refresh_knowledge(KCFG, folder, [], None, root / "v2-full", embedder=embedder)
    assert full["inputs_hash"] == m["inputs_hash"]
    assert read_chunks(root / "v2-full").equals(read_chunks(root / "v2"))
    assert np.allclose(np.load(root / "v2-full" / EMBEDDINGS_FILE), np.load(root / "v2" / EMBEDDINGS_FILE), atol=1e-5)

    again = refresh_knowledge(KCFG, folder, [], root / "v2", root / "v3", embedder=embedder)
    assert again["counts"]["chunks_embedded"] == 0 and again["inputs_hash"] == m["inputs_hash"]


def test_index_type_switches_at_the_threshold(kb, embedder):
    root, n = kb["root"], kb["manifest"]["counts"]["chunks"]
    exact = refresh_knowledge(KnowledgeConfig(exact_index_max_chunks=n), kb["docs"], [], kb["dir"], root / "exact",
                              embedder=embedder)
    small_hnsw = KnowledgeConfig(exact_index_max_chunks=n - 1, hnsw_m=8, hnsw_ef_search=32)
    hnsw = refresh_knowledge(small_hnsw, kb["docs"], [], kb["dir"], root / "hnsw", embedder=embedder)
    assert exact["index"]["type"] == "flat_ip" and isinstance(faiss.read_index(str(root / "exact" / INDEX_FILE)),
                                                              faiss.IndexFlatIP)
    assert hnsw["index"] == {"type": "hnsw_flat_ip", "params": {"M": 8, "efConstruction": 64, "efSearch": 32},
                             "exact_index_max_chunks": n - 1}
    assert isinstance(faiss.read_index(str(root / "hnsw" / INDEX_FILE)), faiss.IndexHNSWFlat)
    assert hnsw["counts"]["chunks_embedded"] == 0
    top = Retriever(root / "hnsw", embedder).search("I forgot my password", k=1)
    assert top[0].doc_id == "account/passwords"


def test_refusing_a_non_empty_output_directory(kb, embedder, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        refresh_knowledge(KCFG, kb["docs"], [], kb["dir"], tmp_path / "out", embedder=embedder)
    assert (tmp_path / "out" / "x").read_text() == "keep me"


# ---------------------------------------------------------------- retrieval


def test_paraphrases_find_the_right_document(retriever):
    cases = {
        "How do I get my money back?": "refunds",
        "I forgot my password, what now?": "account/passwords",
        "How many API calls can I make each minute?": "faq/api-limits",
        "My router broke, is it covered?": "faq/warranty",
        "How fast is express delivery?": "shipping",
    }
    for question, doc_id in cases.items():
        hits = retriever.search(question, k=3)
        assert hits[0].doc_id == doc_id, (question, hits)
        assert hits == sorted(hits, key=lambda h: -h.score)


def test_threshold_filters_hits(retriever):
    assert len(retriever.search("How do I get my money back?", k=3, min_score=-1.0)) == 3
    strict = retriever.search("How do I get my money back?", k=3, min_score=0.99)
    assert strict == []
    assert retriever.search("Who won the football game yesterday?", k=3, min_score=0.3) == []
    assert retriever.search("How do I get my money back?", k=100)  # k above the index size is fine


def test_search_is_thread_safe(retriever):
    questions = ["How do I get my money back?", "I forgot my password", "API rate limit", "router warranty"] * 4
    expected = [[h.chunk_id for h in retriever.search(q, k=3)] for q in questions]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda q: [h.chunk_id for h in retriever.search(q, k=3)], questions))
    assert got == expected


def test_prompt_template():
    hits = [Hit("refunds#0", "refunds", 0.8, "Refund policy: 30 days."), Hit("faq/warranty#0", "faq/warranty", 0.5, "Two years.")]
    template = KnowledgeConfig().prompt_template
    prompt = build_prompt(template, "How long {is} the refund window?", hits)
    assert "Context:\n[refunds] Refund policy: 30 days.\n[faq/warranty] Two years.\n" in prompt
    assert prompt.endswith("Question: How long {is} the refund window?\nAnswer:")
    assert build_prompt("Q={question} C={context}", "hi", []) == f"Q=hi C={NO_CONTEXT}"
    assert doc_ids_of(hits + [Hit("refunds#1", "refunds", 0.4, "x")]) == ["refunds", "faq/warranty"]


# ---------------------------------------------------------------- coverage and recall


def test_coverage_share_and_uncovered_clusters(retriever):
    covered = ["How do I get my money back?"] * 3 + ["I forgot my password"]
    weather = ["What is the weather in Paris tomorrow?", "Will it rain in Paris tomorrow?",
               "Weather forecast for Paris this weekend"]
    cooking = ["How do I cook pasta?", "How long should I boil spaghetti?"]
    report = coverage(retriever, covered + weather + cooking, threshold=0.3)
    assert report["n"] == 9 and report["n_covered"] == 4 and report["share_covered"] == pytest.approx(4 / 9)
    clusters = report["uncovered_clusters"]
    assert [c["size"] for c in clusters] == [3, 2]
    assert sorted(clusters[0]["examples"]) == sorted(weather) and sorted(clusters[1]["examples"]) == sorted(cooking)
    assert coverage(retriever, [], 0.3)["share_covered"] is None


def test_recall_at_5_on_the_demo_domain(tmp_path, embedder):
    from kaizenlm.demo.domain import build_domain

    domain = build_domain(0)
    domain.write_documents(tmp_path / "kb")
    refresh_knowledge(KnowledgeConfig(), tmp_path / "kb", [], None, tmp_path / "art", embedder=embedder)
    labeled = [(f.exam_paraphrases[0], f.doc_id) for f in domain.facts]  # one held-out phrasing per fact
    retriever = Retriever(tmp_path / "art", embedder)
    assert recall_at_k(retriever, labeled, k=5) >= 0.95
    assert recall_at_k(retriever, labeled, k=1) >= 0.85
    # Out-of-scope questions are not covered, in-scope ones are.
    assert coverage(retriever, domain.out_of_scope_exam, KnowledgeConfig().coverage_threshold)["share_covered"] == 0
    assert coverage(retriever, [q for q, _ in labeled], KnowledgeConfig().coverage_threshold)["share_covered"] > 0.95


# ---------------------------------------------------------------- DuckDB inputs, job, registry, CLI


def _turn(turn_id: str, question: str, answer: str, age_days: float = 0.0) -> dict:
    return {"event_id": f"e-{turn_id}", "type": "turn", "schema_version": 1, "ts": time.time() - age_days * 86400,
            "payload": {"turn_id": turn_id, "conversation_id": f"c-{turn_id}", "user_id": "u1",
                        "messages": [{"role": "user", "content": question}], "response": answer}}


def _feedback(event_id: str, turn_id: str, rating: int | None = None, thumbs: int | None = None) -> dict:
    return {"event_id": event_id, "type": "feedback", "schema_version": 1, "ts": time.time(),
            "payload": {"turn_id": turn_id, "rating": rating, "thumbs": thumbs}}


def seed_turns(con) -> None:
    insert_events(con, [
        _turn("t1", "How do I change my billing address?", "Open Billing, then Address, and save.", age_days=1),
        _turn("t2", "Can I pay by bank transfer?", "Yes, always.", age_days=1),
        _turn("t3", "Do you ship to Canada?", "No, only Europe."),
        _turn("t4", "how do I change my  billing address?", "Ask support.", age_days=2),
        _turn("t5", "What is the weather in Paris?", "Sorry, I can only help with Kaizen Cloud.", age_days=10),
        _feedback("f1", "t1", rating=5), _feedback("f1b", "t1", rating=5),
        _feedback("f2", "t2", rating=5), _feedback("f2b", "t2", thumbs=-1),  # disputed
        _feedback("f3", "t3", rating=4),
        _feedback("f4", "t4", rating=5),  # same question as t1, older: t1 is kept
    ])


def test_promoted_answers_and_recent_questions(tmp_path):
    con = connect(tmp_path / "k.duckdb")
    seed_turns(con)
    promoted = promoted_answers(con, min_rating=5)
    assert [(a["turn_id"], a["answer"], a["rating"]) for a in promoted] == [
        ("t1", "Open Billing, then Address, and save.", 5.0)]
    assert [a["turn_id"] for a in promoted_answers(con, min_rating=4)] == ["t1", "t3"]
    assert sorted(recent_questions(con, days=7)) == sorted([
        "How do I change my billing address?", "Can I pay by bank transfer?", "Do you ship to Canada?",
        "how do I change my  billing address?"])
    assert len(recent_questions(con, days=30)) == 5
    assert len(recent_questions(con, days=30, max_questions=2)) == 2
    con.close()


@pytest.mark.integration  # a real child process
def test_refresh_job_registers_a_version_and_the_cli_searches_it(tmp_path, kaizen_env, embedder, capsys):
    cfg = Config(paths=PathsConfig(home=kaizen_env["KAIZEN_HOME"]))
    docs = write_docs(tmp_path / "docs", DOCS)
    con = connect(cfg.duckdb_path)
    seed_turns(con)
    result = refresh(cfg, con, docs)
    assert result["job"]["status"] == "succeeded", result["job"]
    version = result["version"]
    assert version["kind"] == "knowledge" and version["parent_id"] is None and result["alias_moved"]
    assert service.list_aliases(con)["aliases"][KNOWLEDGE_ALIAS] == version["version_id"]
    m = result["metrics"]
    assert (m["documents"], m["chunks"], m["chunks_embedded"]) == (7, 9, 9)  # 6 documents + 1 promoted answer
    assert m["coverage_questions"] == 4 and 0 < m["coverage"] <= 1
    artifact = Path(version["artifact_dir"])
    assert {p.name for p in artifact.iterdir()} == {"index.faiss", "chunks.parquet", "embeddings.npy",
                                                    "manifest.json", "coverage.json"}
    assert "answer:t1" in read_chunks(artifact).column("doc_id").to_pylist()
    con.close()

    assert cli.main(["knowledge", "search", "How do I change my billing address?", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["hits"][0]["doc_id"] == "answer:t1" and out["artifact_dir"] == str(artifact)
    assert cli.main(["knowledge", "coverage", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 4
    assert cli.main(["knowledge", "refresh", "--docs", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
