# dalleserver — common tasks. `make test` is what CI runs.

CARGO ?= cargo

.PHONY: run build test test-tools lint fmt bench book chaos clean fuzz schemathesis slow-client load hit-pairs flood

## Run the server (mock mode when OPENAI_API_KEY is unset).
run:
	$(CARGO) run --release

build:
	$(CARGO) build --release

## Format check, clippy with warnings as errors, then every test: the main suite, then the
## tests that need outside programs (promtool, chromium + chromedriver, curl + jq), each where
## its programs are installed. With CI set, those always run and a missing program fails.
test: lint
	$(CARGO) test --all-targets
	CARGO="$(CARGO)" tests/tool-tests.sh

## Only the tests that need outside programs (see tests/tool-tests.sh).
test-tools:
	CARGO="$(CARGO)" tests/tool-tests.sh

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

## Criterion benchmarks (numbers go in book/src/benchmarks.md).
bench:
	$(CARGO) bench

## Reliability (book/src/reliability.md). Each is bounded in time and uses loopback only.
## cargo-fuzz on every target in fuzz/, FUZZ_SECONDS each (default 60); installs cargo-fuzz.
fuzz:
	scripts/fuzz.sh

## schemathesis (PyPI, into a venv under target/) against /openapi.json of the release server.
schemathesis:
	scripts/schemathesis.sh

## Slow-client protection on the release server: header bytes every 0.5 s, closed at 10 s.
slow-client:
	scripts/slow_client.sh

## Load benchmarks against nginx and ImageMagick (needs nginx, wrk, imagemagick, hyperfine,
## curl, jq; not part of `make test`). Results in target/load/; see book/src/benchmarks.md.
## LOAD_BIN=path/to/dalleserver measures another build (an older one, say) the same way.
load:
	bash scripts/load.sh $(LOAD_BIN)

## 10 000 anonymous ?generate=1 for random addresses in 60 s against a live release server and
## the mock OpenAI, one client then random clients, with a cached image timed meanwhile
## (needs curl, jq; loopback only, about 3 minutes). Figures in book/src/reliability.md.
flood:
	bash scripts/flood.sh

## Goal 1 of the load benchmarks in many short paired rounds (needs nginx, wrk, curl); see
## book/src/benchmarks.md.
hit-pairs:
	bash scripts/hit_pairs.sh

## The mdBook (needs `cargo install mdbook --locked --version 0.4.52 --no-default-features`).
book:
	mdbook build book

## Reliability under a misbehaving OpenAI and kill -9 (see book/src/reliability.md).
chaos:
	bash scripts/chaos.sh

clean:
	$(CARGO) clean
	rm -rf book/book
