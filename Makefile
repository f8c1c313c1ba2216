.PHONY: setup serve test test-fast lint

setup:
	bash scripts/setup.sh

serve:
	bash scripts/serve.sh

test:
	bash scripts/test.sh

lint:
	bash scripts/lint.sh
