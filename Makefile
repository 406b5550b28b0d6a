# The two set-up commands of the README. Each creates the virtualenv on first use.
VENV ?= .venv
PYTHON ?= python3
SIZE ?= 50MB

# requirements.lock: the exact set the suite passed with, as constraints (what a fresh machine installs).
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c requirements.lock -e '.[test]'
	touch $@

.PHONY: lock
# Regenerate requirements.lock from a clean virtualenv (after changing pyproject.toml's dependencies), then run
# `make test` before committing it.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv && .lock-venv/bin/pip install --quiet --upgrade pip
	cd /tmp && $(CURDIR)/.lock-venv/bin/pip install --quiet '$(CURDIR)[test]'
	{ sed -n 1,2p requirements.lock; .lock-venv/bin/pip freeze --exclude-editable | grep -v '^runbooks @'; } \
		> requirements.lock.new && mv requirements.lock.new requirements.lock && rm -rf .lock-venv

.PHONY: demo test down
# Main job on the embedded default: sandbox up + seed, the nightly backup, then the DR game-day drill from it
# (clean cluster, restore, proof, seed 002 scorecard printed). The sandbox stays up: `make down` removes it.
demo: $(VENV)/.installed
	$(VENV)/bin/runbooks sandbox up --size $(SIZE)
	$(VENV)/bin/runbooks run backup
	$(VENV)/bin/runbooks run dr-game-day

# Lint, types, the suite, then the drills (`slow`: faults, kills, a real server end to end). Each pytest run
# starts and removes its own PostgreSQL, S3 server and simulator.
test: $(VENV)/.installed
	$(VENV)/bin/ruff check runbooks runbooks_sandbox flows tasks tests bench deployments
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy runbooks runbooks_sandbox bench
	$(VENV)/bin/pytest -m "not slow"
	$(VENV)/bin/pytest -m slow

down: $(VENV)/.installed
	$(VENV)/bin/runbooks sandbox down
