# The two commands. Both set up everything they need from nothing.
.PHONY: bench test lint
bench:  ## check the backend on this device, then run the benchmark suite
	bash ci/bench.sh
test:   ## set up .venv and run every CPU test (the CI cpu leg)
	bash ci/run_leg.sh cpu
lint:
	ruff check lora_dispatch tests benchmarks
