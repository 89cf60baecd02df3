# dalleserver — common tasks. `make test` is what CI runs.

CARGO ?= cargo

.PHONY: run build test lint fmt bench book chaos clean

## Run the server (mock mode when OPENAI_API_KEY is unset).
run:
	$(CARGO) run --release

build:
	$(CARGO) build --release

## Format check, clippy with warnings as errors, then every test.
test: lint
	$(CARGO) test --all-targets

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

## Criterion benchmarks (numbers go in book/src/benchmarks.md).
bench:
	$(CARGO) bench

## The mdBook (needs `cargo install mdbook --locked --version 0.4.52 --no-default-features`).
book:
	mdbook build book

## Reliability under a misbehaving OpenAI and kill -9 (see book/src/reliability.md).
chaos:
	bash scripts/chaos.sh

clean:
	$(CARGO) clean
	rm -rf book/book
