"""Knowledge documents -> overlapping chunks with stable ids and content hashes.

Sources are a folder of Markdown (.md, .markdown), text (.txt) and JSONL (.jsonl) files,
plus highly rated answers promoted from feedback. Chunks are windows of `chunk_words`
words that overlap by `chunk_overlap` words, so a fact that straddles a window boundary
is whole in at least one chunk. A chunk's id is `<doc_id>#<index>`; its hash is the
sha256 of its normalized text, and that hash is what the embedding cache is keyed on:
an edit to a document re-embeds only the chunks whose text actually changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import unicodedata
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".md", ".markdown", ".txt")
JSONL_SUFFIX = ".jsonl"
PROMOTED_PREFIX = "answer:"


@dataclass(frozen=True)
class Document:
    doc_id: str
    title: str
    text: str
    source: str  # path relative to the docs folder (":<line>" for JSONL), or "feedback" for promoted answers


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    doc_id: str
    chunk_index: int
    text: str
    hash: str


@dataclass
class LoadedDocuments:
    documents: list[Document]
    skipped: list[str]  # "<where>: <why>" for every record that could not be used


def normalize_text(text: str) -> str:
    """Unicode NFC with runs of whitespace collapsed to one space: what gets hashed and embedded."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def content_hash(text: str) -> str:
    return hashlib.sha256(normalize_text(text).encode("utf-8")).hexdigest()


def _markdown_title_and_body(text: str) -> tuple[str, str]:
    """The first '# ' heading is the title; the body is everything else."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip():
            if line.lstrip().startswith("#"):
                return line.strip().lstrip("#").strip(), "\n".join(lines[:i] + lines[i + 1:])
            return "", text
    return "", text


def _documents_from_jsonl(path: Path, rel: str) -> LoadedDocuments:
    docs, skipped = [], []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{rel}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            skipped.append(f"{where}: not JSON ({e.msg})")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("doc_id"), str) or not record["doc_id"].strip():
            skipped.append(f"{where}: needs a non-empty string 'doc_id'")
            continue
        if not isinstance(record.get("text"), str) or not record["text"].strip():
            skipped.append(f"{where}: needs a non-empty string 'text'")
            continue
        title = record.get("title") if isinstance(record.get("title"), str) else ""
        docs.append(Document(record["doc_id"].strip(), title.strip(), record["text"], where))
    return LoadedDocuments(docs, skipped)


def load_documents(folder: str | Path) -> LoadedDocuments:
    """Every document under `folder` (recursively), sorted by doc_id.

    A .md/.txt file is one document whose doc_id is its path relative to the folder
    without the suffix (`billing/refunds.md` -> `billing/refunds`). A .jsonl file holds one
    document per line: {"doc_id": ..., "text": ..., "title": optional}. Unreadable records
    and duplicate doc_ids are skipped and reported, so one bad file does not stop the weekly
    refresh; the first occurrence (in sorted path order) of a duplicate doc_id wins.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"documents folder {folder} does not exist")
    docs: list[Document] = []
    skipped: list[str] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if path.name.startswith("."):
            continue
        suffix = path.suffix.lower()
        if suffix in TEXT_SUFFIXES:
            try:
                raw = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                skipped.append(f"{rel}: not UTF-8 text")
                continue
            title, body = _markdown_title_and_body(raw) if suffix != ".txt" else ("", raw)
            if not normalize_text(title + " " + body):
                skipped.append(f"{rel}: empty")
                continue
            docs.append(Document(rel[: -len(path.suffix)], title, body, rel))
        elif suffix == JSONL_SUFFIX:
            loaded = _documents_from_jsonl(path, rel)
            docs += loaded.documents
            skipped += loaded.skipped
    return _drop_duplicates(docs, skipped)


def _drop_duplicates(docs: list[Document], skipped: list[str]) -> LoadedDocuments:
    seen: dict[str, Document] = {}
    for doc in docs:
        if doc.doc_id in seen:
            skipped.append(f"{doc.source}: duplicate doc_id '{doc.doc_id}' (first defined in {seen[doc.doc_id].source})")
            continue
        seen[doc.doc_id] = doc
    for line in skipped:
        log.warning("skipped %s", line)
    return LoadedDocuments(sorted(seen.values(), key=lambda d: d.doc_id), skipped)


def promoted_documents(answers: list[dict]) -> list[Document]:
    """Promoted answers ({turn_id, question, answer}) as documents `answer:<turn_id>`."""
    docs = []
    for a in answers:
        question, answer = normalize_text(a["question"]), normalize_text(a["answer"])
        if question and answer:
            docs.append(Document(f"{PROMOTED_PREFIX}{a['turn_id']}", question, f"Answer: {answer}", "feedback"))
    return sorted(docs, key=lambda d: d.doc_id)


def chunk_words(words: list[str], size: int, overlap: int) -> list[list[str]]:
    """Windows of `size` words, each starting `size - overlap` words after the previous one.

    The last window ends at the last word; no window is a strict suffix of the one before
    it (a tail shorter than the step is covered by the previous window plus the overlap).
    """
    if not words:
        return []
    step = size - overlap
    windows = [words[start:start + size] for start in range(0, max(len(words) - overlap, 1), step)]
    return windows


def chunk_document(doc: Document, size: int, overlap: int) -> list[Chunk]:
    """The document's chunks. Each chunk starts with the title, so a later chunk still
    says what it is about (`Refund policy: ...`) when embedded and when shown to the model."""
    windows = chunk_words(normalize_text(doc.text).split(), size, overlap) or [[]]
    chunks = []
    for i, window in enumerate(windows):
        text = normalize_text(f"{doc.title}: {' '.join(window)}" if doc.title else " ".join(window))
        if text:
            chunks.append(Chunk(f"{doc.doc_id}#{i}", doc.doc_id, i, text, content_hash(text)))
    return chunks


def chunk_documents(docs: list[Document], size: int, overlap: int) -> list[Chunk]:
    if not 0 <= overlap < size:
        raise ValueError(f"chunk overlap ({overlap}) must be >= 0 and smaller than the chunk size ({size})")
    return [c for doc in docs for c in chunk_document(doc, size, overlap)]
