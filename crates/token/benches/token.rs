//! Scenario 7 of the benchmark suite (`bench/README.md`): the cost of a v2
//! token on the relay's hot path — decode + validate (what every request
//! pays) — and of minting one (what a backend pays).
//!
//! `cargo bench -p relayapi-token --bench token`
//! Gate: decode + validate ≤ 5 µs (v2). Legacy tokens do not exist yet.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use relayapi_token::{decode_v2, encode_v2, open_v2, peek_kid, Claims, Keyring, RaiConfig, V2Key};

const NOW: i64 = 1_700_000_000;
/// A realistic provider key length (OpenAI project keys are ~164 chars).
fn api_key() -> String {
    let mut k = String::from("sk-proj-");
    while k.len() < 164 {
        k.push_str("AbCdEfGhIjKlMnOpQrStUvWxYz0123456789");
    }
    k.truncate(164);
    k
}

fn setup() -> (V2Key, Keyring) {
    let rai = RaiConfig::generate("http://localhost", 8840);
    let key = V2Key::from_rai(&rai);
    let mut ring = Keyring::new();
    #[allow(clippy::unwrap_used)]
    ring.insert(V2Key::from_rai(&rai)).unwrap();
    (key, ring)
}

#[allow(clippy::unwrap_used)]
fn benches(c: &mut Criterion) {
    let (key, ring) = setup();
    let minimal = Claims::new("openai", api_key(), 3600, NOW);
    let full = Claims::new("openai", api_key(), 3600, NOW)
        .with_max_calls(100)
        .with_models(["gpt-4o-mini", "gpt-4o"])
        .with_sub("user-1234")
        .with_ext_info("order 42");
    let t_min = encode_v2(&key, &minimal).unwrap();
    let t_full = encode_v2(&key, &full).unwrap();
    assert_eq!(decode_v2(&ring, &t_min, NOW).unwrap(), minimal);
    assert_eq!(decode_v2(&ring, &t_full, NOW).unwrap(), full);

    let mut g = c.benchmark_group("v2");
    g.bench_function("decode_validate/minimal", |b| {
        b.iter(|| decode_v2(black_box(&ring), black_box(&t_min), black_box(NOW)).unwrap())
    });
    g.bench_function("decode_validate/full_claims", |b| {
        b.iter(|| decode_v2(black_box(&ring), black_box(&t_full), black_box(NOW)).unwrap())
    });
    g.bench_function("open_no_clock/minimal", |b| {
        b.iter(|| open_v2(black_box(&ring), black_box(&t_min)).unwrap())
    });
    g.bench_function("reject_bad_tag", |b| {
        let mut bad = t_min.clone();
        let last = bad.pop().unwrap();
        bad.push(if last == 'A' { 'B' } else { 'A' });
        b.iter(|| decode_v2(black_box(&ring), black_box(&bad), black_box(NOW)).unwrap_err())
    });
    g.bench_function("peek_kid", |b| b.iter(|| peek_kid(black_box(&t_min))));
    g.bench_function("encode/minimal", |b| {
        b.iter(|| encode_v2(black_box(&key), black_box(&minimal)).unwrap())
    });
    g.bench_function("encode/full_claims", |b| {
        b.iter(|| encode_v2(black_box(&key), black_box(&full)).unwrap())
    });
    g.finish();
}

criterion_group!(token, benches);
criterion_main!(token);
