#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time each (`make fuzz`).
#
#   scripts/fuzz.sh                  # every target, 60 s each
#   FUZZ_SECONDS=300 scripts/fuzz.sh # longer
#   scripts/fuzz.sh csv_loader       # one target
#
# cargo-fuzz needs nightly-only compiler flags; on a stable toolchain RUSTC_BOOTSTRAP=1 allows
# them. Installs cargo-fuzz when it is missing. The seed corpora (fuzz/corpus/<target>/seed-*)
# are rewritten from real inputs on every run — request targets, the embedded CSVs and the
# built-in series — and committed; whatever libFuzzer adds to the corpus is git-ignored.
# A crash leaves its input in fuzz/artifacts/<target>/ and makes this script exit non-zero;
# replay it with `RUSTC_BOOTSTRAP=1 cargo fuzz run -s none <target> <file>`.
#
# Sanitizer: none by default (FUZZ_SANITIZER=address to change). The crate forbids unsafe
# code, so what fuzzing finds here is panics, overflows (debug assertions are on) and broken
# invariants, not memory errors; without ASan each run is about twice as fast on 2 cores.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_EACH=${FUZZ_SECONDS:-60}
SANITIZER=${FUZZ_SANITIZER:-none}
# One job: the machine has two cores and someone else may be using the other.
JOBS=${FUZZ_JOBS:-1}
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

ALL_TARGETS=(dalle_request csv_loader series_loader)
if [ $# -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi

seed() { # seed <target> <name>  (content on stdin)
    mkdir -p "fuzz/corpus/$1"
    cat >"fuzz/corpus/$1/seed-$2"
}

write_seeds() {
    local a=0xf503017d7baf7fbc0fff7492b751025c6a78179b
    local b=0x054993ab0f2b1acc0fdc65405ee203b4271bebe6
    local i=0
    for target in \
        "simple/$a?generate=1" \
        "Simple/0XF503017D7BAF7FBC0FFF7492B751025C6A78179B" \
        "film-noir-detectives/$b?remove" \
        "simple/$a?generate=1&generate=0" \
        "simple/$a?%67enerate=1&remove=0" \
        "simple" \
        "/$a" \
        "simple/" \
        "nope/$a" \
        "simple/$a/" \
        "simple/0xzz03017d7baf7fbc0fff7492b751025c6a78179b" \
        "simple//$a" \
        "../files/%2e%2E/etc/passwd" \
        "files/a%2fb/./c%5Cd" \
        "s%C3%A9rie/$a?generate=%31"; do
        printf '%s' "$target" | seed dalle_request "$i"
        i=$((i + 1))
    done

    # One selector byte (low bits: database index in EMBEDDED order; 0x80: load the whole
    # directory), then the header and first 20 rows of the real CSV.
    local names=(adverbs adjectives nouns emotions occupations actions artstyles litstyles
        colors viewpoints gazes compositions places tropes backstyles families orders classes
        phyla)
    for i in "${!names[@]}"; do
        local csv="src/attributes/data/${names[$i]}.csv"
        { printf "\\x$(printf '%02x' $((i | 0x80)))"; head -n 21 "$csv"; } |
            seed csv_loader "${names[$i]}"
    done
    printf '\x00version,adverb,definition\r\nv0.1.0,gently,in a soft way, kindly\nv0.1.0, ,blank\nv0.1.0,"q,""r""\ns",z\n' |
        seed csv_loader quirks
    printf '\x82version,commonName,family\nv0.1.0,fox,Nowhere\nv0.1.0,lonely\n' |
        seed csv_loader nouns-unknown-family

    for json in src/attributes/series/*.json; do
        seed series_loader "$(basename "$json" .json)" <"$json"
    done
    printf '{"suffix":"../Etc Passwd","nouns":["fox",""],"colors":[],"last":3,"deleted":true}' |
        seed series_loader odd-names
}

write_seeds

cd fuzz
status=0
for target in "${TARGETS[@]}"; do
    echo "== $target: ${SECONDS_EACH}s (sanitizer: $SANITIZER)" >&2
    mkdir -p "artifacts/$target"
    # -max_total_time bounds libFuzzer; timeout(1) bounds the build and a wedged run too.
    if ! timeout --kill-after=30 $((SECONDS_EACH + 900)) \
        cargo fuzz run -s "$SANITIZER" --jobs "$JOBS" "$target" -- \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -max_len=8192; then
        echo "!! $target failed; inputs in $ROOT/fuzz/artifacts/$target/" >&2
        status=1
    fi
done
exit $status
