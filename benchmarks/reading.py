"""Reading benchmark: how well does a model answer from the chunks retrieval puts in its prompt?
Prints ONE JSON line.

    .venv/bin/python benchmarks/reading.py --base DIR [--adapter DIR ...] [--templates default,exact]
        [--out benchmarks/out/reading]

A knowledge version is built (the real chunker, all-MiniLM-L6-v2 and FAISS) from the demo's
knowledge base (seed 0), the three documents the demo publishes after its retrain
(demo.stages.NEW_DOCUMENTS) and the PROBES below: documents about facts no demo training row
teaches. Every question gets the context the gateway would give it (`knowledge.top_k` chunks
scoring at least `knowledge.min_score`, formatted as knowledge.retrieval.format_context), in
each prompt template, and is answered greedily (32 tokens); scored by key facts as the exam is.

- `facts`: the 144 held-out phrasings of the demo's 48 facts. A measure for the base only: an
  adapter trained on the demo has learnt some of these facts and need not read them.
- `new`: the demo's three new documents and the probes: facts no model has been trained on, so
  every model must read them. `--adapter` compares retrained adapters with the base here
  (`ratio_to_base`): does a retrain cost the model its reading?

The baseline of the run is the base model with the default template (KnowledgeConfig).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kaizenlm.config import KnowledgeConfig  # noqa: E402
from kaizenlm.demo.domain import build_domain  # noqa: E402
from kaizenlm.demo.stages import NEW_DOCUMENTS  # noqa: E402
from kaizenlm.eval.metrics import key_fact_score  # noqa: E402

# Templates compared with the default (each must use {context} and {question} only).
TEMPLATES = {
    "default": KnowledgeConfig().prompt_template,
    "exact": ("Context:\n{context}\n\nAnswer the question with the exact value the context gives. If the context "
              "does not answer it, say so.\nQuestion: {question}"),
    "question_first": ("Question: {question}\n\nContext:\n{context}\n\nAnswer the question above using the "
                       "context. If the context does not answer it, say so."),
    "default_exact": ("Answer the question with the exact value the context gives. If the context does not "
                      "answer it, say so.\n\nContext:\n{context}\n\nQuestion: {question}\nAnswer:"),
}

# (doc id, title, text, question, the value a right answer states): Kaizen Cloud facts that are
# in no demo training row, written as the demo's documents are (the first sentence names the subject).
PROBES = [
    ("api-timeout", "API timeout", "The API request timeout is 90 seconds. Requests that take longer than 90 "
     "seconds are cancelled.", "What is the API request timeout?", "90 seconds"),
    ("free-team", "Free plan team size", "The Free plan team size is 3 members. A Free plan workspace can have at "
     "most 3 members.", "How many members can a Free plan team have?", "3"),
    ("log-retention", "Log retention", "The log retention period is 14 days. Logs older than 14 days are deleted.",
     "How long are logs kept?", "14 days"),
    ("sso", "Single sign-on", "Single sign-on costs 8 dollars per user a month. It is available on the Business "
     "plan.", "How much does single sign-on cost?", "8 dollars"),
    ("backup", "Backups", "The backup time is 2 am UTC. Kaizen Cloud backs up every workspace daily at 2 am UTC.",
     "When are backups made?", "2 am"),
    ("upload-limit", "Upload limit", "The maximum upload size is 500 megabytes. Larger files must be split before "
     "upload.", "What is the maximum upload size?", "500 megabytes"),
    ("trial", "Free trial", "The free trial length is 21 days. No credit card is needed for the free trial.",
     "How long is the free trial?", "21 days"),
    ("office", "Office address", "The head office is in Lisbon. Visitors are welcome at the Lisbon office on "
     "weekdays.", "Where is the head office?", "The head office is in Lisbon."),
    ("webhooks", "Webhook retries", "Failed webhooks are retried 5 times. The retries are spaced one minute apart.",
     "How many times are failed webhooks retried?", "5"),
    ("gift-cards", "Gift cards", "Gift cards are valid for 2 years. A gift card can be used on any plan.",
     "How long are gift cards valid?", "2 years"),
    ("nonprofit", "Nonprofit discount", "The nonprofit discount is 25 percent. Registered charities get 25 percent "
     "off every plan.", "What is the nonprofit discount?", "25 percent"),
    ("status-page", "Status page", "The status page is updated every 5 minutes during an incident.",
     "How often is the status page updated during an incident?", "5 minutes"),
    ("password", "Password length", "The minimum password length is 12 characters. Passwords must also contain a "
     "number.", "What is the minimum password length?", "12 characters"),
    ("region", "Data region", "Customer data is stored in Frankfurt. No customer data leaves the Frankfurt region.",
     "Where is customer data stored?", "Customer data is stored in Frankfurt."),
    ("phone-support", "Phone support", "Phone support is available on the Enterprise plan only. The phone line is "
     "open from 9 to 5.", "Which plan includes phone support?", "Phone support is on the Enterprise plan."),
]


def build_knowledge(work: Path) -> Path:
    """A knowledge version of the demo's documents, NEW_DOCUMENTS and PROBES; returns its directory."""
    from kaizenlm.knowledge.index import refresh_knowledge

    docs = work / "docs"
    build_domain(0).write_documents(docs)
    for doc_id, title, text, _, _ in [*NEW_DOCUMENTS, *PROBES]:
        (docs / f"{doc_id}.md").write_text(f"# {title}\n\n{text}\n", encoding="utf-8")
    out = work / "knowledge"
    refresh_knowledge(KnowledgeConfig(), docs, [], None, out)
    return out


def questions() -> dict[str, list[tuple[str, str]]]:
    """(question, reference) per question set."""
    domain = build_domain(0)
    return {"facts": [(q, f.answer) for f in domain.facts for q in f.exam_paraphrases],
            "new": [(q, value) for *_, q, value in [*NEW_DOCUMENTS, *PROBES]]}


def score(model, tokenizer, template: str, rows: list[tuple[str, str]], contexts: list[str]) -> dict:
    from kaizenlm.base.generate import generate_answers

    started = time.perf_counter()
    prompts = [template.format(context=c, question=q) for (q, _), c in zip(rows, contexts, strict=True)]
    answers = generate_answers(model, tokenizer, prompts, 32)
    scores = [key_fact_score(a, ref) for a, (_, ref) in zip(answers, rows, strict=True)]
    return {"score": round(sum(scores) / len(scores), 3), "n": len(rows), "seconds": round(time.perf_counter() - started),
            "wrong": [a for a, s in zip(answers, scores, strict=True) if s < 1][:5]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="the base model directory (e.g. a converted SmolLM2)")
    p.add_argument("--adapter", action="append", default=[], help="a retrained LoRA adapter of that base (repeatable)")
    p.add_argument("--templates", default="default", help=f"comma-separated, of {sorted(TEMPLATES)}")
    p.add_argument("--out", default="benchmarks/out/reading", help="work folder (documents, knowledge version)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    names = [t.strip() for t in args.templates.split(",") if t.strip()]
    unknown = sorted(set(names) - set(TEMPLATES))
    if unknown:
        p.error(f"--templates: unknown template(s) {unknown}; choose from {sorted(TEMPLATES)}")
    for flag, path, marker in [("--base", args.base, "config.json"),
                               *[("--adapter", a, "adapter_config.json") for a in args.adapter]]:
        if not (Path(path) / marker).is_file():
            p.error(f"{flag}: no {marker} in {path}; give a model directory (e.g. `kaizen base build` writes one)")
    import torch
    from peft import PeftModel

    from kaizenlm.base.model import load_model_and_tokenizer
    from kaizenlm.knowledge.retrieval import Retriever, format_context

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="reading-", dir=args.out))
    retriever = Retriever(build_knowledge(work))
    kcfg = KnowledgeConfig()
    sets = questions()
    contexts = {name: [format_context(h) for h in retriever.search_many([q for q, _ in rows], kcfg.top_k,
                                                                        kcfg.min_score)]
                for name, rows in sets.items()}
    model, tokenizer = load_model_and_tokenizer(args.base)
    results: dict = {"base": {}}
    for template in names:
        print(f"base, template {template}", file=sys.stderr, flush=True)
        results["base"][template] = {name: score(model, tokenizer, TEMPLATES[template], rows, contexts[name])
                                     for name, rows in sets.items()}
    for adapter in args.adapter:
        tuned = PeftModel.from_pretrained(model, adapter)
        results[adapter] = {}
        for template in names:
            print(f"{adapter}, template {template}", file=sys.stderr, flush=True)
            new = score(tuned, tokenizer, TEMPLATES[template], sets["new"], contexts["new"])
            base_new = results["base"][template]["new"]["score"]
            results[adapter][template] = {"new": new, "ratio_to_base": round(new["score"] / base_new, 3)
                                          if base_new else None}
        model = tuned.unload()
    baseline = results["base"]["default"]["facts"]["score"] if "default" in names else None
    print(json.dumps({
        "benchmark": "reading",
        "results": results,
        "template_ratio_to_default_facts": {t: round(results["base"][t]["facts"]["score"] / baseline, 3)
                                            for t in names} if baseline else None,
        "top_k": kcfg.top_k, "min_score": kcfg.min_score,
        "total_s": round(time.perf_counter() - started),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads}",
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
