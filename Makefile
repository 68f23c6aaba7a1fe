.PHONY: serve test lint bench train

serve:  ## start the service on 127.0.0.1:8000 (installs into .venv first)
	bash scripts/serve.sh

test:  ## run the whole test suite (installs into .venv first)
	bash scripts/test.sh

lint:
	bash scripts/bootstrap.sh && .venv/bin/ruff check . && .venv/bin/ruff format --check .

bench:  ## latency, capacity, scope and editing benchmarks (the editing runs take hours on 2 cores)
	bash scripts/bootstrap.sh
	.venv/bin/python -m bench.service_bench
	.venv/bin/python -m bench.capacity
	.venv/bin/python -m bench.scope_sweep
	bash bench/editing/cpu_run.sh
	bash bench/editing/latent_run.sh
	.venv/bin/python -m bench.editing.report

train:  ## retrain both shipped latent-decoder adapters (about 45 min on 2 cores, both in parallel)
	bash scripts/bootstrap.sh
	for f in hybrid latent; do LARIMAR_TORCH_THREADS=1 .venv/bin/larimar-train --decoder $$f --steps 200 \
	  --out /tmp/larimar-train/$$f --export models/adapters/smollm2-135m-instruct-$$f & done; wait
