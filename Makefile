.PHONY: setup serve test lint

setup:
	bash scripts/setup.sh

serve:
	bash scripts/serve.sh

test:
	bash scripts/test.sh

lint:
	.venv/bin/ruff check src tests benchmarks
