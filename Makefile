# The two commands of README.md: `make run` and `make test`. Each sets itself up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt constraints.txt | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=
LINT_STAMP := $(VENV)/.lint-installed-$(shell cat requirements-lint.txt constraints.txt | cksum | cut -d' ' -f1)
# checkov pins packaging<24, which pytest refuses: it has a virtualenv of its own inside .venv.
CHECKOV_VENV := $(VENV)/checkov
CHECKOV_STAMP := $(VENV)/.checkov-installed-$(shell cat requirements-checkov.txt | cksum | cut -d' ' -f1)
# System programs of `make stack`, `make lint` and their tests, as program=Debian package.
TOOLS := nginx=nginx-light pgbouncer=pgbouncer envsubst=gettext-base promtool=prometheus
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: run test migrate venv clean stack lint tools

# The set-up says what it does on stderr: the stdout of `make run` and `make stack` holds JSON log lines alone.
$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "dbapi needs Python 3.11 or newer" >&2; exit 1; }
	@echo "make: installing the pinned dependencies into $(VENV)" >&2
	@$(PYTHON) -m venv $(VENV) >&2
	@$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt >&2
	@rm -f $(VENV)/.installed-*
	@touch $@

venv: $(STAMP)

$(LINT_STAMP): $(STAMP) requirements-lint.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-lint.txt -c constraints.txt
	rm -f $(VENV)/.lint-installed-*
	touch $@

$(CHECKOV_STAMP): $(STAMP) requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-checkov.txt
	ln -sf ../checkov/bin/checkov $(VENV)/bin/checkov
	rm -f $(VENV)/.checkov-installed-*
	touch $@

# Install nginx, pgbouncer, envsubst and promtool from Debian when missing; apt-get update only when one is missing.
tools:
	@missing=""; for pair in $(TOOLS); do \
	  command -v $${pair%%=*} >/dev/null 2>&1 || [ -x /usr/sbin/$${pair%%=*} ] || missing="$$missing $${pair#*=}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "make tools: installing$$missing" >&2; \
	  $(SUDO) apt-get update -qq >&2 && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >&2; \
	fi

# The production topology natively: PostgreSQL, optional pgbouncer (STACK_PGBOUNCER=1), REPLICAS
# gunicorn replicas and nginx on PORT. Ctrl-C stops it.
stack: $(STAMP) tools
	@$(PY) -m ops.stack

# Offline checks of the compose files, k8s/ (as kustomize builds it; checkov too), the Dockerfiles (hadolint,
# checkov), the rendered nginx template and the Prometheus alert rules (promtool).
lint: $(LINT_STAMP) $(CHECKOV_STAMP) tools
	$(PY) -m ops.lint

run: $(STAMP)
	@$(PY) manage.py serve

migrate: $(STAMP)
	@$(PY) manage.py migrate

# pytest exits 5 when it collected no test: that is a failure here, never a silent pass. The suite runs
# twice: as served (fast paths on), then with FAST_PATHS=0, the libraries' stock code paths only, to prove
# both give the same answers (the second run leaves out tests/topology, which starts real servers).
test: $(STAMP) lint
	@for fast in 1 0; do \
	  if [ $$fast = 1 ]; then args="$(PYTEST_ARGS)"; else args="$${PYTEST_ARGS:---ignore=tests/topology tests}"; fi; \
	  echo "make test: FAST_PATHS=$$fast pytest $$args"; \
	  ENVIRONMENT=test FAST_PATHS=$$fast $(PY) -m pytest $$args; status=$$?; \
	  if [ $$status -eq 5 ]; then echo "make test: no tests ran"; exit 1; fi; \
	  if [ $$status -ne 0 ]; then exit $$status; fi; \
	done

clean:
	rm -rf $(VENV) .pytest_cache

# `make bench` (issue 5, docs/performance.md): the gateway against a bare Flask + psycopg2 baseline in the same
# run, into bench/results/<date>.md. BENCH_ARGS passes options, e.g. BENCH_ARGS="--only 1,5" or "--profile".
# wrk and valgrind (for --instructions) come from Debian: apt-get update only when installing them without one fails.
BENCH_STAMP := $(VENV)/.bench-installed-$(shell cat bench/requirements.txt constraints.txt | cksum | cut -d' ' -f1)
BENCH_ARGS ?=
.PHONY: bench

$(BENCH_STAMP): $(STAMP) bench/requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt -c constraints.txt
	rm -f $(VENV)/.bench-installed-*
	touch $@

bench: $(BENCH_STAMP) tools
	@{ command -v wrk && command -v valgrind; } >/dev/null 2>&1 \
	  || $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk valgrind \
	  || { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk valgrind; }
	$(PY) -m bench.run $(BENCH_ARGS)
