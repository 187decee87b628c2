//! Tokens of the earlier Go RelayAPI (`legacy_tokens = true`): every URL
//! shape, and the attacks the earlier server fell to.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use aes::cipher::{block_padding::Pkcs7, BlockEncryptMut, KeyIvInit};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::*;
use futures_util::StreamExt;
use relayapi::usage::UsageStore;

type Enc = cbc::Encryptor<aes::Aes256>;

/// Mints a legacy token the way the earlier SDKs did (independent of the
/// relay's decoder): base64url(IV ‖ AES-256-CBC-PKCS7(json)).
fn mint(aes_key_hex: &str, json: &str, iv: [u8; 16]) -> String {
    let key: [u8; 32] = hex::decode(aes_key_hex).unwrap().try_into().unwrap();
    let mut out = iv.to_vec();
    out.extend(Enc::new(&key.into(), &iv.into()).encrypt_padded_vec_mut::<Pkcs7>(json.as_bytes()));
    URL_SAFE_NO_PAD.encode(out)
}

fn rfc3339(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(unix).unwrap());
    relayapi::logs::request::rfc3339_utc(t)
}

/// A JSON object with its members in the order given (serde_json's own maps
/// sort their keys, an order no generator wrote).
fn ordered_json(members: &[(&str, serde_json::Value)]) -> String {
    let members: Vec<String> = members
        .iter()
        .map(|(k, v)| format!("{}:{v}", serde_json::Value::from(*k)))
        .collect();
    format!("{{{}}}", members.join(","))
}

/// The fields in the Python and JavaScript generators' order: `id` first.
fn legacy_fields(max_calls: i64, ext_info: &str) -> Vec<(&'static str, serde_json::Value)> {
    vec![
        ("id", "1735689600000".into()),
        ("api_key", MOCK_KEY.into()),
        ("max_calls", max_calls.into()),
        ("expire_time", rfc3339(now() + 3600).into()),
        ("created_at", rfc3339(now() - 5).into()),
        ("provider", "openai".into()),
        ("ext_info", ext_info.into()),
    ]
}

fn legacy_json(max_calls: i64, ext_info: &str) -> String {
    ordered_json(&legacy_fields(max_calls, ext_info))
}

/// The Java generator's order (`java.util.HashMap`'s): `{"max_calls":…`,
/// so the whole first member lies in the first, IV-controlled, block.
fn java_json(max_calls: i64) -> String {
    let fields = legacy_fields(max_calls, "");
    let by_name = |n: &str| fields.iter().find(|(k, _)| *k == n).unwrap().clone();
    let order = [
        "max_calls",
        "api_key",
        "provider",
        "expire_time",
        "created_at",
        "id",
        "ext_info",
    ];
    ordered_json(&order.map(by_name))
}

async fn legacy_env(tweak: impl FnOnce(&mut relayapi::config::Config)) -> Env {
    Env::start_with(
        |c| {
            tweak(c);
            c.legacy_tokens = true;
            // Let legacy tokens name the mock's URL directly, as the old server allowed.
            let openai = c.providers["openai"].base_url.clone().unwrap();
            c.legacy.allowed_provider_urls = vec![openai.trim_end_matches("/v1").to_string()];
            c.rate_limit.requests_per_second = 0.0;
            c.rate_limit.ip_limit = None;
        },
        UsageStore::memory(),
    )
    .await
}

struct Legacy {
    env: Env,
    key_hex: String,
    rai_hash: String,
}

async fn setup() -> Legacy {
    setup_with(|_| {}).await
}

async fn setup_with(tweak: impl FnOnce(&mut relayapi::config::Config)) -> Legacy {
    let env = legacy_env(tweak).await;
    let key_hex = env.rai.crypto.aes_key.expose().to_string();
    let rai_hash = env.rai.legacy_hash();
    // The relay was started with only the v2 key of this .rai: give it the legacy key too.
    let mut keys = relayapi::keyfile::Keys::from({
        let mut k = relayapi_token::Keyring::new();
        k.insert(relayapi_token::V2Key::from_rai(&env.rai)).unwrap();
        k
    });
    keys.legacy
        .insert(relayapi_token::LegacyKey::from_rai(&env.rai));
    env.relay.state.keys.replace(keys);
    Legacy {
        env,
        key_hex,
        rai_hash,
    }
}

#[tokio::test]
async fn every_legacy_url_shape_reaches_the_provider() {
    let l = setup().await;
    let t = mint(&l.key_hex, &legacy_json(100, ""), [1; 16]);
    let h = &l.rai_hash;
    let b = format!("http://{}/relayapi/", l.env.relay.addr);
    let shapes = [
        format!("{b}echo/x?token={t}&rai_hash={h}&keep=1"),
        format!("{b}?keep=1&token={t}&rai_hash={h}/echo/x"),
        format!("{b}?keep=1&token={t}&rai_hash={h}==/echo/x"),
        format!("{b}?keep=1&token={t}/echo/x"),
        format!("{b}?keep=1&token={t}==/v1/echo/x"),
        format!("{b}?token={t}&rai_hash={h}/echo/x?keep=1"),
    ];
    for url in shapes {
        let resp = l.env.http.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        let echo: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(echo["path"], "/v1/echo/x", "{url}");
        assert_eq!(echo["query"], "keep=1", "{url}");
        assert_eq!(
            echo["headers"]["authorization"],
            format!("Bearer {MOCK_KEY}")
        );
        assert!(
            !echo.to_string().contains(&t[..30]),
            "token forwarded: {url}"
        );
    }
}

/// A legacy call's record names the legacy key's id as `kid`, and the
/// relay's counter id (not the generator's malleable `id`) as `jti`.
#[tokio::test]
async fn legacy_records_carry_the_key_id_and_the_counter_id() {
    let (url, records) = receiver().await;
    let l = setup_with(|c| {
        c.log.console = relayapi::logs::sinks::console::ConsoleSetting::Enabled(false);
        c.log.web.enabled = true;
        c.log.web.callback_url = url;
        c.log.batch_max_delay = std::time::Duration::from_millis(20);
    })
    .await;
    let t = mint(&l.key_hex, &legacy_json(100, ""), [3; 16]);
    let resp = l
        .env
        .http
        .get(format!("{}models?token={t}", l.env.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap();
    let all = wait_records(&records, 1).await;
    assert_eq!(all.len(), 1, "{all:?}");
    let rec = &all[0];
    let key = relayapi_token::LegacyKey::from_rai(&l.env.rai);
    assert_eq!(rec["kid"], key.key_id(), "{rec}");
    let jti = rec["jti"].as_str().unwrap();
    assert!(jti.starts_with('L') && jti.len() == 43, "{rec}");
    assert!(!rec.to_string().contains(&t[..40]), "{rec}");
}

#[tokio::test]
async fn legacy_tokens_are_refused_unless_enabled() {
    let env = Env::start().await;
    let t = mint(
        env.rai.crypto.aes_key.expose(),
        &legacy_json(5, ""),
        [2; 16],
    );
    let resp = env
        .http
        .get(format!("{}models?token={t}", env.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (401, "token_invalid".to_string()));
}

#[tokio::test]
async fn rep_m_replaces_the_model_and_max_calls_count() {
    let l = setup().await;
    let t = mint(
        &l.key_hex,
        &legacy_json(2, r#"{"rep_m":"forced-by-rep_m"}"#),
        [3; 16],
    );
    let url = format!(
        "{}chat/completions?token={t}&rai_hash={}",
        l.env.base(),
        l.rai_hash
    );
    for remaining in ["1", "0"] {
        let resp = l.env.post_chat(&url, false).await;
        assert_eq!(resp.headers()["x-relayapi-calls-remaining"], remaining);
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["model"], "forced-by-rep_m");
    }
    let resp = l.env.post_chat(&url, false).await;
    assert_eq!(error_code(resp).await, (429, "token_exhausted".to_string()));
}

#[tokio::test]
async fn raw_provider_urls_only_from_the_allow_list() {
    let l = setup().await;
    let json = legacy_json(5, "").replace(
        "\"provider\":\"openai\"",
        "\"provider\":\"https://evil.example/v1\"",
    );
    let t = mint(&l.key_hex, &json, [4; 16]);
    let resp = l
        .env
        .http
        .get(format!("{}models?token={t}", l.env.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(resp).await,
        (400, "provider_unknown".to_string())
    );

    let allowed = format!("{}/v1", l.env.mock.url());
    let json = legacy_json(5, "").replace(
        "\"provider\":\"openai\"",
        &format!("\"provider\":\"{allowed}\""),
    );
    let t = mint(&l.key_hex, &json, [4; 16]);
    let resp = l
        .env
        .http
        .get(format!("{}models?token={t}", l.env.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A v2 token may never name a URL, allow-list or not.
    let mut claims = l.env.claims("openai");
    claims.provider = allowed;
    let resp = l
        .env
        .http
        .get(format!("{}{}/models", l.env.base(), l.env.mint(&claims)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(resp).await,
        (400, "provider_unknown".to_string())
    );
}

/// xorshift64: reproducible fuzz input without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn text(&mut self, alphabet: &[u8], max_len: u64) -> String {
        let len = (self.next() % max_len) as usize;
        (0..len)
            .map(|_| alphabet[(self.next() % alphabet.len() as u64) as usize] as char)
            .collect()
    }
}

/// Status, headers (but the per-request id and date) and body.
async fn fingerprint(resp: reqwest::Response) -> (u16, BTreeMap<String, String>, String) {
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .filter(|(k, _)| *k != "x-request-id" && *k != "date")
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    (status, headers, resp.text().await.unwrap())
}

#[tokio::test]
async fn bit_flips_never_leak_and_never_reset_the_counter() {
    let l = setup().await;
    let token = mint(&l.key_hex, &legacy_json(1, ""), [5; 16]);
    let url = |t: &str| format!("{}models?token={t}&rai_hash={}", l.env.base(), l.rai_hash);
    assert_eq!(
        l.env.http.get(url(&token)).send().await.unwrap().status(),
        200
    );
    let reference = fingerprint(l.env.http.get(url("AAAA")).send().await.unwrap()).await;
    assert_eq!(reference.0, 401);
    assert!(reference.2.contains("token_invalid"));

    let raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
    let mut admitted = 0;
    let mut exhausted = 0;
    let mut invalid = 0;
    for bit in 0..raw.len() * 8 {
        let mut r = raw.clone();
        r[bit / 8] ^= 1 << (bit % 8);
        let resp = fingerprint(
            l.env
                .http
                .get(url(&URL_SAFE_NO_PAD.encode(&r)))
                .send()
                .await
                .unwrap(),
        )
        .await;
        if resp == reference {
            invalid += 1;
        } else if resp.0 == 429 && resp.2.contains("token_exhausted") {
            // Decoded (an IV flip edits the `id`), but it is the same token's counter.
            exhausted += 1;
        } else if resp.0 == 200 {
            admitted += 1;
        } else {
            panic!("bit {bit}: unexpected answer {resp:?}");
        }
    }
    assert_eq!(admitted, 0, "a tampered variant got a fresh call counter");
    assert!(exhausted > 0, "IV flips inside the id should still decode");
    assert!(invalid > 0);
}

/// A Java-order token starts `{"max_calls":1,"`: 16 bytes its holder knows
/// and the IV rewrites at will. Refused (the same `token_invalid` as any
/// other bad token) unless `legacy.accept_first_block_fields` accepts the
/// risk, which is then exactly this: the flipped token gets 9 calls.
#[tokio::test]
async fn java_order_tokens_are_refused_unless_opted_in() {
    let mint_java = |key_hex: &str| {
        let json = java_json(1);
        assert!(json.starts_with(r#"{"max_calls":1,""#), "{json}");
        let token = mint(key_hex, &json, [7; 16]);
        let mut raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        for (i, (from, to)) in json.bytes().zip(*br#"{"max_calls":9,""#).enumerate() {
            raw[i] ^= from ^ to;
        }
        (token, URL_SAFE_NO_PAD.encode(raw))
    };
    let get = |l: &Legacy, t: &str| {
        l.env
            .http
            .get(format!(
                "{}models?token={t}&rai_hash={}",
                l.env.base(),
                l.rai_hash
            ))
            .send()
    };

    let l = setup().await;
    let (token, raised) = mint_java(&l.key_hex);
    let reference = fingerprint(get(&l, "AAAA").await.unwrap()).await;
    assert_eq!(reference.0, 401);
    assert!(reference.2.contains("token_invalid"));
    for t in [&token, &raised] {
        assert_eq!(fingerprint(get(&l, t).await.unwrap()).await, reference);
    }
    // The Python/JavaScript order (`id` first) is unaffected.
    let python = mint(&l.key_hex, &legacy_json(1, ""), [7; 16]);
    assert_eq!(get(&l, &python).await.unwrap().status(), 200);

    let l = setup_with(|c| c.legacy.accept_first_block_fields = true).await;
    let (token, raised) = mint_java(&l.key_hex);
    let resp = get(&l, &token).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-relayapi-calls-remaining"], "0");
    assert_eq!(
        error_code(get(&l, &token).await.unwrap()).await,
        (429, "token_exhausted".to_string())
    );
    // The accepted risk: same counter, limit 9.
    let resp = get(&l, &raised).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-relayapi-calls-remaining"], "7");
}

/// Whitespace around a token is tolerated when it arrives as whitespace
/// (`%20`); a `+` is a standard-base64 character, never a space here.
#[tokio::test]
async fn surrounding_whitespace_must_be_percent_encoded() {
    let l = setup().await;
    let t = mint(&l.key_hex, &legacy_json(100, ""), [9; 16]);
    for (token, want) in [
        (format!("%20{t}%20"), 200),
        (format!("%20{t}=="), 200),
        (format!("+{t}+"), 401),
    ] {
        let resp = l
            .env
            .http
            .get(format!("{}models?token={token}", l.env.base()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), want, "{token:.12}");
    }
}

/// The admin API revokes a legacy token by the relay's counter id (its
/// `jti` in records: `L` + 42 base64url characters), not by the
/// generator's `id`.
#[tokio::test]
async fn admin_revokes_a_legacy_token_by_its_counter_id() {
    const ADMIN_KEY: &str = "admin-test-key-0123456789abcdef";
    let l = setup_with(|c| {
        c.admin.listen = "127.0.0.1:0".into();
        c.admin.api_key = Some(ADMIN_KEY.into());
    })
    .await;
    let t = mint(&l.key_hex, &legacy_json(100, ""), [8; 16]);
    let mut ring = relayapi_token::LegacyKeyring::new();
    ring.insert(relayapi_token::LegacyKey::from_rai(&l.env.rai));
    let counter_id = relayapi_token::decode_legacy(&ring, &t, None, now())
        .unwrap()
        .counter_id;
    assert!(counter_id.starts_with('L') && counter_id.len() == 43);
    let admin = format!("http://{}", l.env.relay.admin_addr.unwrap());
    let call = || {
        l.env
            .http
            .get(format!("{}models?token={t}", l.env.base()))
            .send()
    };
    assert_eq!(call().await.unwrap().status(), 200);
    for (jti, effect) in [("1735689600000", 200), (counter_id.as_str(), 401)] {
        let resp = l
            .env
            .http
            .post(format!("{admin}/admin/tokens/{jti}/revoke"))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{jti}");
        let resp = call().await.unwrap();
        assert_eq!(resp.status(), effect, "after revoking {jti}");
    }
    assert_eq!(
        error_code(call().await.unwrap()).await,
        (401, "token_revoked".to_string())
    );
}

#[tokio::test]
async fn fuzzed_token_and_rai_hash_only_ever_get_token_errors() {
    let l = setup().await;
    let base = l.env.base();
    let cases: usize = std::env::var("RELAYAPI_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let alphabet: &[u8] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/%.~ ";
    let valid = mint(&l.key_hex, &legacy_json(5, ""), [6; 16]);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let mut urls = Vec::with_capacity(cases);
    for i in 0..cases {
        let token = match i % 4 {
            // Random text of random length.
            0 | 1 => rng.text(alphabet, 200),
            // A valid token with a random splice.
            2 => {
                let cut = (rng.next() as usize) % valid.len();
                format!("{}{}", &valid[..cut], rng.text(alphabet, 40))
            }
            // Random bytes in whole blocks, correctly encoded.
            _ => {
                let blocks = 1 + (rng.next() % 8) as usize;
                URL_SAFE_NO_PAD.encode(
                    (0..blocks * 16)
                        .map(|_| rng.next() as u8)
                        .collect::<Vec<u8>>(),
                )
            }
        };
        let rai_hash = if i % 3 == 0 {
            l.rai_hash.clone()
        } else {
            rng.text(alphabet, 80)
        };
        urls.push(format!(
            "{base}models?token={}&rai_hash={}",
            enc(&token),
            enc(&rai_hash)
        ));
    }
    let http = l.env.http.clone();
    let results = futures_util::stream::iter(urls)
        .map(|url| {
            let http = http.clone();
            async move {
                let resp = http.get(&url).send().await.unwrap();
                let status = resp.status().as_u16();
                let code = resp
                    .json::<serde_json::Value>()
                    .await
                    .map(|v| v["error"]["code"].as_str().unwrap_or("").to_string())
                    .unwrap_or_default();
                (status, code, url)
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    assert_eq!(results.len(), cases);
    for (status, code, url) in results {
        assert!(
            (status, code.as_str()) == (401, "token_invalid")
                || (status, code.as_str()) == (401, "token_missing"),
            "{url} → {status} {code}"
        );
    }
}
