.PHONY: setup demo test test-quick bench
setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/neuralcleanse demo

# The full suite, as CI runs it.
test: setup
	@bash scripts/setup_browser.sh
	.venv/bin/python -m pytest -q

# The quick subset for development (under a minute): every test not marked slow.
test-quick: setup
	.venv/bin/python -m pytest -q -m "not slow"

bench: setup
	.venv/bin/python -m benchmarks.scan_speed
