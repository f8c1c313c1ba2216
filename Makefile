.PHONY: setup serve test test-fast lint

setup:
	bash scripts/setup.sh dev

serve:
	bash scripts/serve.sh

test:
	bash scripts/test.sh

test-fast:
	bash scripts/test-fast.sh

lint:
	bash scripts/lint.sh
