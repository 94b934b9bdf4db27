# kubectl-dnstrace: the commands a newcomer and a release need.
#
#   make demo    install into .venv and replay the incident on the simulated cluster
#   make test    run the test suite (CI runs this, with CI=true); as root it includes the
#                real-cluster tier (tests/real, on ../shared/realk8s)
#   make test-real   only the real-cluster tier
#   make dist    build dist/kubectl-dnstrace_<version>.tar.gz and dist/dnstrace.yaml
#   make lint    ruff, plus vermin for the parts that must run on python3 >= 3.8
#   make krew-manifest   copy dist/dnstrace.yaml to krew-manifest.yaml (release step)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?= -q
DEMO_DOMAIN ?= evil.example.com
DEMO_DURATION ?= 20s

.PHONY: demo test test-real dist lint krew-manifest clean lab-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The plain install (what a user gets) is enough for the demo.
$(BIN)/kubectl-dnstrace: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(BIN)/pytest: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,dist]'
	touch $@

# The Debian tools the simulated cluster runs (dnsmasq, dig, ip, ...): installed if missing.
lab-deps:
	bash packaging/debian-deps.sh

demo: lab-deps $(BIN)/kubectl-dnstrace
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m tests.lab run \
		--scenario tests/scenarios/incident.yaml -- \
		kubectl dnstrace coredns --domain $(DEMO_DOMAIN) --duration $(DEMO_DURATION)

test: $(BIN)/pytest
	@bash packaging/debian-deps.sh || echo "(without them the lab tests skip, or fail under CI=true)"
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest $(PYTEST_ARGS)

# The real single-node Kubernetes (../shared/realk8s): up at the start, down at the end.
test-real: $(BIN)/pytest
	@bash packaging/debian-deps.sh || echo "(without them the lab tests skip, or fail under CI=true)"
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest $(PYTEST_ARGS) -m real tests/real

dist: $(BIN)/pytest
	$(BIN)/python packaging/build_dist.py --out dist

krew-manifest: dist
	cp dist/dnstrace.yaml krew-manifest.yaml

lint: $(BIN)/pytest
	$(BIN)/ruff check .
	$(BIN)/vermin --no-tips --violations --target=3.8- \
		kubectl_dnstrace/agent kubectl_dnstrace/dnswire.py kubectl_dnstrace/protocol.py

clean:
	rm -rf dist build *.egg-info .pytest_cache
