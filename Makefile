# The few verbs everyone uses; each is a script in scripts/ so a fresh machine needs no make.
.PHONY: setup run test lint bench
setup: ; scripts/setup --dev
run: ; scripts/up
test: ; scripts/test
lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy
bench: ; scripts/bench
