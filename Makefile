.PHONY: setup demo test bench
setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/neuralcleanse demo

test: setup
	@bash scripts/setup_browser.sh
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python benchmarks/scan_speed.py
