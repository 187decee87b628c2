//! Scenario 7 of the benchmark suite (`bench/README.md`): the cost of a v2
//! token on the relay's hot path — decode + validate (what every request
//! pays) — and of minting one (what a backend pays).
//!
//! `cargo bench -p relayapi-token --bench token`
//! Gate: decode + validate ≤ 5 µs (v2 and legacy).

use aes::cipher::{block_padding::Pkcs7, BlockEncryptMut, KeyIvInit};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use relayapi_token::{
    decode_legacy, decode_v2, encode_v2, open_v2, peek_kid, Claims, Keyring, LegacyKey,
    LegacyKeyring, RaiConfig, V2Key,
};

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

    // Legacy (earlier Go relay): base64url(IV || AES-256-CBC(PKCS#7(JSON))),
    // minted here the way the old SDKs did (the crate only decodes).
    let rai = RaiConfig::generate("http://localhost", 8840);
    let mut lring = LegacyKeyring::new();
    lring.insert(LegacyKey::from_rai(&rai));
    let json = format!(
        r#"{{"id":"1700000000000","api_key":"{}","max_calls":100,"expire_time":"2023-11-15T00:00:00Z","created_at":"2023-11-14T22:13:20Z","provider":"openai","ext_info":""}}"#,
        api_key()
    );
    let key: [u8; 32] = *rai.aes_key_bytes();
    let iv = [7u8; 16];
    let ct = cbc::Encryptor::<aes::Aes256>::new(&key.into(), &iv.into())
        .encrypt_padded_vec_mut::<Pkcs7>(json.as_bytes());
    let legacy = URL_SAFE_NO_PAD.encode([iv.to_vec(), ct].concat());
    decode_legacy(&lring, &legacy, None, NOW).unwrap();
    let mut g = c.benchmark_group("legacy");
    g.bench_function("decode_validate", |b| {
        b.iter(|| {
            decode_legacy(black_box(&lring), black_box(&legacy), None, black_box(NOW)).unwrap()
        })
    });
    g.finish();
}

criterion_group!(token, benches);
criterion_main!(token);
