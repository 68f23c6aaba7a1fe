"""The service benchmark (``python -m bench.service_bench``): see ``__main__`` for what it measures."""
