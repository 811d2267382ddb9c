# qemu.qmp developer targets.  `make help` lists them.

# Use the active virtual environment, or make one in .venv.
ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
else
VENV := $(CURDIR)/.venv
endif
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.qemu-qmp-devel
DEBIAN_PACKAGES := qemu-system-x86 qemu-guest-agent qemu-utils

.PHONY: help develop system-deps check check-only lint typecheck docs test \
	pythons demo bench clean reference-api tui-screenshot transcripts

help:
	@echo "qemu.qmp developer targets:"
	@echo "  make develop      editable install with the devel, docs and tui"
	@echo "                    extras into \$$VIRTUAL_ENV, or into .venv"
	@echo "                    (created if needed)"
	@echo "  make system-deps  install QEMU, qemu-storage-daemon and qemu-ga"
	@echo "                    (Debian, as root) for the integration tests"
	@echo "  make check        set everything up, then flake8, mypy --strict,"
	@echo "                    the documentation build, then make pythons"
	@echo "  make test         pytest on the venv's Python (all the tests,"
	@echo "                    then the unit tests on uvloop)"
	@echo "  make pythons      the tests on every Python that setup.cfg"
	@echo "                    claims (found on PATH or under pyenv;"
	@echo "                    venvs and logs in build/pythons), two"
	@echo "                    runs at a time"
	@echo "  make check-only   the same checks, without the set-up"
	@echo "  make docs         the documentation site, into build/docs"
	@echo "  make demo         a live qmp-shell session: real QEMU when"
	@echo "                    installed, the built-in test server otherwise;"
	@echo "                    needs nothing but python3 (no install)"
	@echo "  make bench        benchmarks against the reference library"
	@echo "  make transcripts  record tests/transcripts/qemu-VERSION/ from"
	@echo "                    real QEMU (QEMU=path for another version)"
	@echo "  make tui-screenshot  redraw docs/_static/qmp-tui.svg, the"
	@echo "                    screenshot on the qmp-tui page"
	@echo "  make reference-api  regenerate tests/reference_api.txt, the"
	@echo "                    reference library's names, in a throwaway venv"
	@echo "  make clean        remove build, cache and venv files"

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e '.[devel,docs,tui]'
	@touch $@

develop: $(STAMP)

# Real peers for the integration tests.  Skipped (with a note) when not
# root or not on Debian: those tests then skip locally.
system-deps:
	@if command -v qemu-system-x86_64 >/dev/null && command -v qemu-ga >/dev/null \
	    && command -v qemu-storage-daemon >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES); \
	else \
	    echo "note: QEMU binaries missing; integration tests will skip" \
	         "(install: $(DEBIAN_PACKAGES))"; \
	fi

check: develop system-deps
	$(MAKE) check-only

# Run on their own, the checks set up what they need first (a fresh clone
# has no .venv); under `check-only` they run as things are, with no
# set-up step to slow it down.
ifeq ($(filter check-only,$(MAKECMDGOALS)),)
SETUP := develop
endif

lint: $(SETUP)
	$(PYTHON) -m flake8 qemu tests examples docs $(wildcard bench)

typecheck: $(SETUP)
	$(PYTHON) -m mypy -p qemu
	$(PYTHON) -m mypy examples docs/_ext docs/tui_screenshot.py

# Warnings are errors: a broken reference or a public name missing from
# the API reference (docs/_ext/apicheck.py) fails the build.  -E: read
# every page again, so no warning hides in an old environment.
docs: $(SETUP)
	$(PYTHON) -m sphinx -E -q -W --keep-going -b html -d build/doctrees \
	    docs build/docs

# Debug mode and warnings-as-errors: "exception was never retrieved",
# "Task was destroyed" and ResourceWarning fail the run.
# The unit tests run a second time on uvloop (QMP_TEST_LOOP=uvloop).
test: $(SETUP)
	PYTHONASYNCIODEBUG=1 PYTHONDEVMODE=1 $(PYTHON) -m pytest
	QMP_TEST_LOOP=uvloop PYTHONDEVMODE=1 $(PYTHON) -m pytest -q tests/unit

# pytest on every claimed Python found here: the unit tests on each, all
# the tests (and mypy) on the oldest and the newest, the unit tests on
# uvloop on the venv's Python (tests/pythons.py).
pythons: $(SETUP)
	$(PYTHON) -m tests.pythons

check-only: lint typecheck docs pythons

# The library needs only the standard library: run it from the checkout.
demo:
	@PYTHONPATH=$(CURDIR) python3 -m qemu.qmp.qmp_shell --demo

bench: develop
	$(PYTHON) bench/run.py

# Sessions recorded from real QEMU, replayed by the tests.
transcripts: develop
	PYTHONPATH=$(CURDIR) $(PYTHON) tests/transcripts/record.py

# A private history directory: the session typed is not added to yours.
tui-screenshot: develop
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	XDG_STATE_HOME="$$tmp" $(PYTHON) docs/tui_screenshot.py

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .hypothesis .tox
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -rf .venv bench/.venv-*

# The reference library's public names, for tests/unit/test_exports.py;
# made in a throwaway venv (from a directory where this tree cannot shadow
# it), never installed here.
REFERENCE := qemu.qmp==0.0.6
reference-api:
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	python3 -m venv "$$tmp/venv" && \
	"$$tmp/venv/bin/pip" install -q '$(REFERENCE)' && \
	cd "$$tmp" && "$$tmp/venv/bin/python" -c \
	    "import sys; sys.path.append('$(CURDIR)'); \
	     from tests import api_names; api_names.main()" \
	    > '$(CURDIR)/tests/reference_api.txt'
	@echo "wrote tests/reference_api.txt"
