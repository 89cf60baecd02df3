//! Address → dress → all six prompts, and the pieces of it. Run with `make bench`; the
//! numbers are recorded in `book/src/benchmarks.md`.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use dalleserver::attributes::Attributes;
use dalleserver::attributes::database::Databases;
use dalleserver::attributes::selection::make_dress;
use dalleserver::attributes::series::Series;

const ADDRESS: &str = "0xf503017d7baf7fbc0fff7492b751025c6a78179b";

fn bench(c: &mut Criterion) {
    let Ok(attributes) = Attributes::load(None, PathBuf::from("/nonexistent")) else {
        return;
    };
    let plain = Series::default();
    let Some(noir) = attributes.series.get("film-noir-detectives") else {
        return;
    };

    c.bench_function("load embedded databases", |b| b.iter(Databases::embedded));
    c.bench_function("address -> dress (unfiltered)", |b| {
        b.iter(|| make_dress(black_box(ADDRESS), &plain, &attributes.databases, None))
    });
    c.bench_function("address -> dress (filtered series)", |b| {
        b.iter(|| make_dress(black_box(ADDRESS), &noir, &attributes.databases, None))
    });
    let Ok(dress) = make_dress(ADDRESS, &plain, &attributes.databases, None) else {
        return;
    };
    c.bench_function("dress -> six prompts", |b| {
        b.iter(|| dalleserver::prompts::render(black_box(&dress)))
    });
    c.bench_function("address -> dress -> six prompts", |b| {
        b.iter(|| attributes.dress_in(black_box(ADDRESS), &plain, None))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
