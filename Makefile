# The two quickstart commands (each sets up what it needs first):
#   make demo   - local Kafka + Redis, a worker, a replayed data set, lists read back from Redis
#   make test   - the whole test suite, integration tests against a real broker and redis-server
.PHONY: setup demo test bench

setup:
	./scripts/bootstrap.sh

demo: setup
	.venv/bin/freshrec demo $(ARGS)

test: setup
	.venv/bin/python -m pytest $(ARGS)

bench: setup
	.venv/bin/freshrec bench $(ARGS)
