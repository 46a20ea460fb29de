# Two commands do all the setup on a fresh machine (see README):
#   make bench    the main job: the default benchmark (cnn-digits, masked-digits, dqn-cartpole; both
#                 backends, 3 seeds, parity levels, overhead); report in bench-results/<time>/
#   make test     lint (ruff) and the test suite (CI runs this)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: bench parity test install clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[torch,tf-cpu,dev,onnx]'
	touch $(STAMP)

install: $(STAMP)

bench: $(STAMP)
	$(BIN)/dualkit bench

parity: $(STAMP)
	$(BIN)/dualkit parity cnn-digits

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -ra

clean:
	rm -rf $(VENV) runs bench-results .pytest_cache
