# The two commands of the README. Both set everything up first (idempotently).
.PHONY: demo test setup services-start services-stop bench

setup:
	./scripts/setup.sh

demo: setup
	./scripts/demo.sh

test: setup
	./scripts/test.sh

services-start: setup
	./scripts/services.sh start

services-stop:
	./scripts/services.sh stop

bench: setup
	.venv/bin/python benchmarks/nexmark.py --query q1 --events 50000000 --parallelism 2 --repeat 3 --reference
