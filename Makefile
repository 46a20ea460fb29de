# Two commands do all the setup on a fresh machine (see README):
#   make parity   the main job: both backends on scikit-learn's digits, every parity level, a verdict table
#   make test     the test suite (CI runs this)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: parity test install clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[torch,tf-cpu,dev]'
	touch $(STAMP)

install: $(STAMP)

parity: $(STAMP)
	$(BIN)/dualkit parity cnn-digits

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

clean:
	rm -rf $(VENV) runs .pytest_cache
