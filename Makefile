# The two commands of README.md: `make run` and `make test`. Each sets itself up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt constraints.txt | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: run test migrate venv clean

$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "dbapi needs Python 3.11 or newer"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

run: $(STAMP)
	$(PY) manage.py serve

migrate: $(STAMP)
	$(PY) manage.py migrate

# pytest exits 5 when it collected no test: that is a failure here, never a silent pass.
test: $(STAMP)
	ENVIRONMENT=test $(PY) -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: no tests ran"; exit 1; fi; exit $$status

clean:
	rm -rf $(VENV) .pytest_cache
