# Two commands do all the set-up: `make book` builds the website, `make test` runs every check.
# Both create .venv on first use and reinstall it when requirements.txt or pyproject.toml change.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HTML   := _build/html
# Two pytest workers for the two cores of a small machine; tests/conftest.py keeps each worker
# to one PyTorch thread so they do not thrash.
WORKERS ?= 2

.PHONY: setup book test lint unit browser exercises clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

# The chapters' models are small: one PyTorch thread runs them fastest, and two threads
# spinning on a busy 2-core machine made one chapter 17 times slower (275 s against 16 s).
book: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/jupyter-book build . --all --warningiserror --keep-going
	@echo "The book is built: open file://$(abspath $(HTML))/index.html"

lint: $(STAMP)
	$(BIN)/ruff check .

exercises: $(STAMP)
	$(BIN)/python -m seqlib.exercises sync

# Unit, kernel, grading and exercise tests, plus nbval on the solution notebooks.
# Two workers, one thread each (notebook kernels started by the tests inherit it too).
unit: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -n $(WORKERS) --dist loadscope -m "not browser" \
		tests solutions --nbval-lax --nbval-current-env

# The built site in headless Chromium (needs `make book` first).
browser: $(STAMP)
	$(BIN)/python -m pytest -m browser tests/test_browser.py

test: lint unit book browser

clean:
	rm -rf _build
