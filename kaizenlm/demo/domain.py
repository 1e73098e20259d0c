"""The generated support domain of the embedded default: "Kaizen Cloud".

A tiny model must learn this domain in minutes on two CPU cores, so everything here is
short and regular: every answer has the shape "The <subject> is <value>." and every user
question is one of a dozen wrappers around the fact's subject ("How long is the refund
window?"). The exam asks the same facts with wrappers held out *for that fact* (each
wrapper is still seen with other facts in training), so passing the exam means the model
learnt subject -> value, not the exact string.

Everything is deterministic from the seed: the seed shuffles which wrappers go to training
and which to the exam, and which out-of-scope questions are held out. The facts themselves
are fixed so that documents, exams and benchmarks stay comparable across seeds.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path

DOMAIN_NAME = "Kaizen Cloud"
REFUSAL = "Sorry, I can only help with Kaizen Cloud questions."

# (topic, subject, value). The answer is f"The {subject} is {value}."
_FACTS: list[tuple[str, str, str]] = [
    ("billing", "refund window", "30 days"),
    ("billing", "invoice day", "the first of the month"),
    ("billing", "late payment fee", "5 dollars"),
    ("billing", "billing currency", "US dollars"),
    ("billing", "payment grace period", "7 days"),
    ("billing", "payment method", "credit card"),
    ("shipping", "standard shipping time", "5 days"),
    ("shipping", "express shipping time", "2 days"),
    ("shipping", "shipping cost", "9 dollars"),
    ("shipping", "free shipping threshold", "50 dollars"),
    ("shipping", "shipping carrier", "Fastpost"),
    ("shipping", "shipping region", "Europe"),
    ("returns", "return window", "45 days"),
    ("returns", "return shipping cost", "free"),
    ("returns", "restocking fee", "10 dollars"),
    ("returns", "return label expiry", "14 days"),
    ("returns", "refund method", "the original card"),
    ("returns", "exchange limit", "2 items"),
    ("account", "minimum password length", "12 characters"),
    ("account", "username limit", "20 characters"),
    ("account", "account deletion time", "30 days"),
    ("account", "session timeout", "15 minutes"),
    ("account", "recovery email", "help@kaizen.cloud"),
    ("account", "profile photo limit", "5 megabytes"),
    ("security", "two factor method", "an authenticator app"),
    ("security", "encryption standard", "AES 256"),
    ("security", "failed login limit", "5 attempts"),
    ("security", "security contact", "security@kaizen.cloud"),
    ("security", "data center location", "Frankfurt"),
    ("security", "audit log retention", "90 days"),
    ("plans", "free plan storage", "5 gigabytes"),
    ("plans", "pro plan price", "20 dollars a month"),
    ("plans", "team plan price", "50 dollars a month"),
    ("plans", "pro plan storage", "100 gigabytes"),
    ("plans", "team plan seat limit", "10 users"),
    ("plans", "trial length", "14 days"),
    ("api", "api rate limit", "100 requests a minute"),
    ("api", "api base url", "api.kaizen.cloud"),
    ("api", "api key prefix", "kz"),
    ("api", "api version", "v2"),
    ("api", "api timeout", "30 seconds"),
    ("api", "webhook retry limit", "3 attempts"),
    ("hardware", "router model", "K100"),
    ("hardware", "warranty period", "2 years"),
    ("hardware", "power supply", "12 volts"),
    ("hardware", "hardware support hours", "9 to 5"),
    ("hardware", "device weight", "400 grams"),
    ("hardware", "replacement time", "3 days"),
]

TOPICS = ["billing", "shipping", "returns", "account", "security", "plans", "api", "hardware"]

# Question wrappers around a subject. The first is the canonical question.
QUESTION_TEMPLATES = [
    "What is the {s}?",
    "What's the {s}?",
    "Tell me the {s}.",
    "Can you tell me the {s}?",
    "I want to know the {s}.",
    "Do you know the {s}?",
    "Please tell me the {s}.",
    "{S}?",
    "Quick question: what is the {s}?",
    "Hi, what is the {s} for Kaizen Cloud?",
    "Which {s} do you have?",
    "What is your {s}?",
]
N_TRAIN_PARAPHRASES = 7  # besides the canonical question
N_EXAM_PARAPHRASES = 3

# Numbers a wrong answer may swap in (plausible for days, dollars, limits, ...).
_WRONG_NUMBERS = [2, 3, 4, 5, 7, 8, 10, 12, 14, 15, 20, 25, 30, 40, 45, 50, 60, 90, 100, 120]

# Out-of-scope questions: (template, fillers). Some fillers are held out for the exam.
_OUT_OF_SCOPE = [
    ("What is the weather in {x}?", ["Paris", "Tokyo", "Berlin", "Lima", "Oslo", "Cairo", "Rome", "Seoul"]),
    ("Who won the {x} game yesterday?", ["football", "tennis", "hockey", "chess", "rugby", "cricket", "golf", "baseball"]),
    ("How do I cook {x}?", ["rice", "pasta", "eggs", "soup", "bread", "fish", "beans", "pancakes"]),
    ("What is the capital of {x}?", ["France", "Japan", "Peru", "Kenya", "Chile", "Spain", "Norway", "Egypt"]),
    ("Tell me a joke about {x}.", ["cats", "dogs", "pirates", "robots", "cows", "ghosts", "bananas", "teachers"]),
    ("Can you recommend a good {x}?", ["movie", "book", "song", "podcast", "restaurant", "hotel", "game", "show"]),
    ("How tall is {x}?", ["Everest", "the Eiffel Tower", "a giraffe", "Mont Blanc", "Big Ben", "K2", "an elephant", "Kilimanjaro"]),
    ("Write a poem about {x}.", ["the sea", "autumn", "love", "the moon", "rain", "winter", "flowers", "the city"]),
    ("Who is the president of {x}?", ["Brazil", "Italy", "Mexico", "Ghana", "Poland", "India", "Chile", "Kenya"]),
    ("What time does the {x} open?", ["bank", "museum", "zoo", "bakery", "library", "pharmacy", "gym", "post office"]),
    ("Translate {x} into Spanish.", ["hello", "thank you", "good night", "cheese", "water", "friend", "house", "book"]),
    ("Who wrote {x}?", ["Hamlet", "Don Quixote", "Dracula", "Emma", "Ulysses", "Beloved", "Frankenstein", "Faust"]),
    ("What is the population of {x}?", ["Canada", "Brazil", "Iceland", "Nigeria", "Vietnam", "Greece", "Ireland", "Cuba"]),
    ("How far is {x} from here?", ["the moon", "Mars", "London", "Sydney", "the ocean", "the equator", "Jupiter", "the north pole"]),
    ("What does a {x} eat?", ["panda", "koala", "shark", "penguin", "camel", "beaver", "hamster", "parrot"]),
    ("Who painted {x}?", ["the Mona Lisa", "The Scream", "Guernica", "Starry Night", "The Kiss", "Water Lilies", "Las Meninas", "The Night Watch"]),
    ("When was {x} invented?", ["the telephone", "the bicycle", "paper", "the radio", "glass", "the compass", "the camera", "the piano"]),
    ("What is the best way to learn {x}?", ["guitar", "French", "chess", "swimming", "painting", "yoga", "dancing", "knitting"]),
    ("How many legs does a {x} have?", ["spider", "crab", "horse", "ant", "octopus", "beetle", "lobster", "centipede"]),
    ("Which team plays in {x}?", ["Madrid", "Boston", "Milan", "Munich", "Chicago", "Lisbon", "Dallas", "Turin"]),
    ("What should I plant in {x}?", ["spring", "my garden", "a pot", "the shade", "autumn", "sandy soil", "a balcony", "summer"]),
    ("Explain how {x} works.", ["a rainbow", "photosynthesis", "a volcano", "gravity", "a tornado", "the tide", "an eclipse", "thunder"]),
    ("What is the meaning of the word {x}?", ["serendipity", "melancholy", "ephemeral", "nostalgia", "wanderlust", "euphoria", "solitude", "whimsy"]),
    ("Where can I find {x}?", ["fresh flowers", "concert tickets", "a puppy", "vintage shoes", "old coins", "a kite", "board games", "sea shells"]),
]
_OOS_EXAM_PER_TEMPLATE = 3

_TOPIC_INTROS = {
    "billing": "This page explains how Kaizen Cloud bills customers and handles payments.",
    "shipping": "This page explains how Kaizen Cloud ships orders and devices.",
    "returns": "This page explains how to return an item to Kaizen Cloud.",
    "account": "This page explains how Kaizen Cloud accounts work.",
    "security": "This page explains how Kaizen Cloud keeps your data safe.",
    "plans": "This page compares the Kaizen Cloud plans.",
    "api": "This page explains the Kaizen Cloud developer API.",
    "hardware": "This page describes the Kaizen Cloud router hardware.",
}


@dataclass
class Doc:
    doc_id: str
    topic: str
    title: str
    text: str


@dataclass
class Fact:
    qid: str
    topic: str
    question: str
    answer: str
    doc_id: str
    paraphrases: list[str] = field(default_factory=list)
    exam_paraphrases: list[str] = field(default_factory=list)
    subject: str = ""
    value: str = ""


@dataclass
class Domain:
    name: str
    refusal: str
    facts: list[Fact]
    docs: list[Doc]
    out_of_scope: list[str]
    out_of_scope_exam: list[str]

    def __post_init__(self) -> None:
        self._by_qid = {f.qid: f for f in self.facts}
        self._by_question = {}
        for f in self.facts:
            for q in [f.question, *f.paraphrases, *f.exam_paraphrases]:
                self._by_question[_norm(q)] = f
        self._oos = {_norm(q) for q in [*self.out_of_scope, *self.out_of_scope_exam]}

    def fact(self, qid: str) -> Fact:
        return self._by_qid[qid]

    def fact_for_question(self, question: str) -> Fact | None:
        """The fact a generated question asks about (any phrasing), or None."""
        return self._by_question.get(_norm(question))

    def is_out_of_scope(self, question: str) -> bool:
        """True for a generated out-of-scope question (train or exam)."""
        return _norm(question) in self._oos

    def wrong_answer(self, fact: Fact, rng: random.Random) -> str:
        """A plausible but wrong answer: the same sentence with another number, or another fact's answer."""
        while True:
            answer = self._wrong_answer_once(fact, rng)
            if _norm(answer) != _norm(fact.answer):
                return answer

    def _wrong_answer_once(self, fact: Fact, rng: random.Random) -> str:
        numbers = re.findall(r"\d+", fact.value)
        if numbers and rng.random() < 0.7:
            old = numbers[0]
            new = rng.choice([n for n in _WRONG_NUMBERS if str(n) != old])
            value = re.sub(r"\d+", str(new), fact.value, count=1)
            return f"The {fact.subject} is {value}."
        same_topic = [f for f in self.facts if f.topic == fact.topic and f.qid != fact.qid]
        other = rng.choice(same_topic)
        if rng.random() < 0.5:
            # Right subject, another fact's value: the most plausible kind of mistake.
            return f"The {fact.subject} is {other.value}."
        return other.answer

    def train_rows(self) -> list[dict]:
        """SFT rows {prompt, response, qid} over the canonical question and training paraphrases."""
        return [{"prompt": q, "response": f.answer, "qid": f.qid} for f in self.facts for q in [f.question, *f.paraphrases]]

    def exam_rows(self) -> list[dict]:
        """Exam rows {prompt, reference, qid} over the held-out paraphrases."""
        return [{"prompt": q, "reference": f.answer, "qid": f.qid} for f in self.facts for q in f.exam_paraphrases]

    def refusal_rows(self, exam: bool = False) -> list[dict]:
        """Rows {prompt, response} whose right answer is the refusal string."""
        questions = self.out_of_scope_exam if exam else self.out_of_scope
        return [{"prompt": q, "response": self.refusal} for q in questions]

    def write_documents(self, folder: str | Path) -> list[Path]:
        """Write every knowledge-base document as <doc_id>.md; return the paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for doc in self.docs:
            path = folder / f"{doc.doc_id}.md"
            path.write_text(doc.text, encoding="utf-8")
            paths.append(path)
        return paths


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _question(template: str, subject: str) -> str:
    return template.format(s=subject, S=subject[0].upper() + subject[1:])


def _build_docs(facts: list[Fact]) -> list[Doc]:
    docs = []
    for topic in TOPICS:
        topic_facts = [f for f in facts if f.topic == topic]
        # Two documents per topic: a guide (first half of the facts) and a policy page.
        for part, (kind, chunk) in enumerate([("guide", topic_facts[:3]), ("policy", topic_facts[3:])], start=1):
            doc_id = f"kb-{topic}-{part}"
            title = f"Kaizen Cloud {topic} {kind}"
            paragraphs = [f"# {title}", _TOPIC_INTROS[topic]]
            for f in chunk:
                paragraphs.append(
                    f"## {f.subject[0].upper() + f.subject[1:]}\n\n{f.answer} "
                    f"Contact support if you have questions about the {f.subject}."
                )
            docs.append(Doc(doc_id=doc_id, topic=topic, title=title, text="\n\n".join(paragraphs) + "\n"))
    return docs


def build_domain(seed: int = 0) -> Domain:
    """The Kaizen Cloud domain; the seed decides the train/exam split of the phrasings."""
    rng = random.Random(seed)
    facts = []
    per_topic: dict[str, int] = {}
    for topic, subject, value in _FACTS:
        per_topic[topic] = per_topic.get(topic, 0) + 1
        n = per_topic[topic]
        doc_id = f"kb-{topic}-{1 if n <= 3 else 2}"
        wrappers = QUESTION_TEMPLATES[1:]
        rng.shuffle(wrappers)
        facts.append(Fact(
            qid=f"{topic}-{n}",
            topic=topic,
            question=_question(QUESTION_TEMPLATES[0], subject),
            answer=f"The {subject} is {value}.",
            doc_id=doc_id,
            paraphrases=[_question(t, subject) for t in wrappers[:N_TRAIN_PARAPHRASES]],
            exam_paraphrases=[_question(t, subject) for t in wrappers[N_TRAIN_PARAPHRASES:N_TRAIN_PARAPHRASES + N_EXAM_PARAPHRASES]],
            subject=subject,
            value=value,
        ))
    oos_train, oos_exam = [], []
    for template, fillers in _OUT_OF_SCOPE:
        fillers = list(fillers)
        rng.shuffle(fillers)
        oos_exam += [template.format(x=x) for x in fillers[:_OOS_EXAM_PER_TEMPLATE]]
        oos_train += [template.format(x=x) for x in fillers[_OOS_EXAM_PER_TEMPLATE:]]
    return Domain(
        name=DOMAIN_NAME, refusal=REFUSAL, facts=facts, docs=_build_docs(facts),
        out_of_scope=oos_train, out_of_scope_exam=oos_exam,
    )
