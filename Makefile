.PHONY: serve test lint bench

serve:  ## start the service on 127.0.0.1:8000 (installs into .venv first)
	bash scripts/serve.sh

test:  ## run the whole test suite (installs into .venv first)
	bash scripts/test.sh

lint:
	bash scripts/bootstrap.sh && .venv/bin/ruff check . && .venv/bin/ruff format --check .

bench:  ## latency, capacity, scope and editing benchmarks (the editing runs take hours on 2 cores)
	bash scripts/bootstrap.sh
	.venv/bin/python bench/service_bench.py
	.venv/bin/python bench/capacity.py
	.venv/bin/python bench/scope_sweep.py
	bash bench/editing/cpu_run.sh
	.venv/bin/python -m bench.editing.report
