//! Redaction: what never reaches a sink.
//!
//! - [`redact_headers`]: credential headers (and configured extras) become
//!   `[REDACTED]`.
//! - [`redact_json_body`]: values of credential-like JSON fields at any depth.
//!   Works on the text itself (a small scanner), so the body keeps its layout
//!   and key order; [`redact_json_lenient`] applies the same scanner to JSON
//!   cut by the capture cap, which does not parse.
//! - [`redact_form_fields`]: the same names in a form-urlencoded body.
//! - [`scrub`]: last line of defence, replaces known secret strings anywhere.

use http::HeaderMap;

/// What replaces every masked value.
pub const REDACTED: &str = "[REDACTED]";

/// Headers whose values are always masked (lower case).
pub const ALWAYS_REDACTED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "cookie",
    "set-cookie",
];

/// JSON body field names whose values are always masked (compared ASCII
/// case-insensitively).
pub const ALWAYS_REDACTED_JSON_FIELDS: &[&str] =
    &["api_key", "apiKey", "key", "token", "password", "secret"];

/// Shortest run that starts like a v2 token's header (`eyJ`) and is masked
/// as one: a cut or damaged token is still a secret.
const JWE_RUN_MIN: usize = 40;
/// Shortest run of token characters masked whatever it starts with: a
/// legacy token (base64url of IV and ciphertext, 130+ characters) or any
/// other opaque credential. Provider paths and ids are far shorter; a long
/// hex digest would be masked too, which costs a log reader little.
const OPAQUE_RUN_MIN: usize = 100;

/// Characters of a v2 token (base64url and its dots) and of base64 padding.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'=')
}

/// Whether `raw` — a query value, path segment or header value, as sent —
/// holds something shaped like a token: a run of token characters that
/// starts with `eyJ` and is [`JWE_RUN_MIN`] long, or any run
/// [`OPAQUE_RUN_MIN`] long. Percent escapes are decoded first (`%65yJ…`,
/// `%2E` for the dots). The located token is scrubbed as a known secret;
/// this covers tokens the relay did not locate — sent under a name it does
/// not read, in a second path segment, escaped, or a legacy token while
/// legacy tokens are off — which are then not known as secrets.
pub fn looks_like_token(raw: &str) -> bool {
    // Cheap exit for the common short value; escapes only lengthen text.
    if raw.len() < JWE_RUN_MIN {
        return false;
    }
    let decoded;
    let text = if raw.contains('%') {
        decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
        decoded.as_bytes()
    } else {
        raw.as_bytes()
    };
    text.split(|b| !is_token_char(*b)).any(|run| {
        run.len() >= OPAQUE_RUN_MIN || (run.len() >= JWE_RUN_MIN && run.starts_with(b"eyJ"))
    })
}

/// Masks every query value (or bare name) that [`looks_like_token`], under
/// any parameter name; the name is kept.
pub fn token_like_query_values(query: &mut String) {
    if query.len() < JWE_RUN_MIN {
        return;
    }
    let masks =
        |pair: &str| -> bool { looks_like_token(pair.split_once('=').map_or(pair, |(_, v)| v)) };
    if !query.split('&').any(masks) {
        return;
    }
    let masked: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            _ if !masks(pair) => pair.to_string(),
            Some((name, _)) => format!("{name}={REDACTED}"),
            None => REDACTED.to_string(),
        })
        .collect();
    *query = masked.join("&");
}

/// Replaces every path segment that [`looks_like_token`]: for the log of a
/// request refused before its token was located, and for a second token in
/// a path.
pub fn token_like_path_segments(path: &mut String) {
    if path.len() < JWE_RUN_MIN || !path.split('/').any(looks_like_token) {
        return;
    }
    let masked: Vec<&str> = path
        .split('/')
        .map(|seg| if looks_like_token(seg) { REDACTED } else { seg })
        .collect();
    *path = masked.join("/");
}

/// Headers as `(name, value)` pairs in map order, with credential values
/// replaced by `[REDACTED]`. `extra` adds header names (case-insensitive).
/// Non-UTF-8 values are kept lossily.
pub fn redact_headers(headers: &HeaderMap, extra: &[String]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let n = name.as_str();
            let masked = ALWAYS_REDACTED_HEADERS
                .iter()
                .any(|h| h.eq_ignore_ascii_case(n))
                || extra.iter().any(|h| h.eq_ignore_ascii_case(n));
            let v = if masked {
                REDACTED.to_owned()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            (n.to_owned(), v)
        })
        .collect()
}

/// Masks the values of `api_key`, `apiKey`, `key`, `token`, `password`,
/// `secret` and `fields` at any depth, when `text` parses as JSON; any other
/// text is returned unchanged. The value (string, number, object, array…)
/// becomes the string `"[REDACTED]"`; the rest of the text is untouched.
pub fn redact_json_body(text: &str, fields: &[String]) -> String {
    if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
        return text.to_owned();
    }
    redact_json_lenient(text, fields)
}

/// The scanner behind [`redact_json_body`], without the "must parse" check:
/// for JSON text cut short by a cap. A value cut mid-way is masked to the end.
pub fn redact_json_lenient(text: &str, fields: &[String]) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut copied = 0; // text[..copied] is already in `out`
    while i < b.len() {
        if b[i] != b'"' {
            i += 1;
            continue;
        }
        let end = string_end(b, i);
        let key_raw = &text[i..end];
        let colon = skip_ws(b, end);
        if colon < b.len() && b[colon] == b':' && key_matches(key_raw, fields) {
            let vstart = skip_ws(b, colon + 1);
            if vstart >= b.len() {
                break;
            }
            let vend = value_end(b, vstart);
            out.push_str(&text[copied..vstart]);
            out.push('"');
            out.push_str(REDACTED);
            out.push('"');
            copied = vend;
            i = vend;
        } else {
            i = end;
        }
    }
    out.push_str(&text[copied.min(text.len())..]);
    out
}

/// Masks the values of `application/x-www-form-urlencoded` fields named
/// like the JSON fields of [`redact_json_body`] (same list, same
/// comparison). A name is compared percent-decoded (`+` as a space), and so
/// is its last `[…]` part (`user[password]`, `a[b][token]`). The value
/// becomes `[REDACTED]`, names and order stay; a pair cut by the capture cap
/// is masked to the end.
pub fn redact_form_fields(text: &str, fields: &[String]) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, pair) in text.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((name, _)) if form_name_matches(name, fields) => {
                out.push_str(name);
                out.push('=');
                out.push_str(REDACTED);
            }
            _ => out.push_str(pair),
        }
    }
    out
}

/// A form field's name as sent, percent-decoded (`+` as a space), or its
/// last `[…]` part, is one of the redacted fields.
fn form_name_matches(raw: &str, fields: &[String]) -> bool {
    let spaced;
    let raw = if raw.contains('+') {
        spaced = raw.replace('+', " ");
        spaced.as_str()
    } else {
        raw
    };
    let name = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    if field_matches(&name, fields) {
        return true;
    }
    match name.strip_suffix(']').and_then(|n| n.rsplit_once('[')) {
        Some((_, last)) => field_matches(last, fields),
        None => false,
    }
}

fn field_matches(key: &str, fields: &[String]) -> bool {
    ALWAYS_REDACTED_JSON_FIELDS
        .iter()
        .any(|f| f.eq_ignore_ascii_case(key))
        || fields.iter().any(|f| f.eq_ignore_ascii_case(key))
}

fn key_matches(raw_with_quotes: &str, fields: &[String]) -> bool {
    let inner = raw_with_quotes
        .strip_prefix('"')
        .map(|s| s.strip_suffix('"').unwrap_or(s))
        .unwrap_or(raw_with_quotes);
    let key: std::borrow::Cow<'_, str> = if inner.contains('\\') {
        match serde_json::from_str::<String>(raw_with_quotes) {
            Ok(s) => s.into(),
            Err(_) => inner.into(),
        }
    } else {
        inner.into()
    };
    field_matches(&key, fields)
}

/// Index just past the closing quote of the string starting at `start`
/// (which is a `"`), or `b.len()` when unterminated.
fn string_end(b: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\r' | b'\n') {
        i += 1;
    }
    i
}

/// Index just past the JSON value starting at `start` (or `b.len()` when it
/// is cut short).
fn value_end(b: &[u8], start: usize) -> usize {
    match b[start] {
        b'"' => string_end(b, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            while i < b.len() {
                match b[i] {
                    b'"' => {
                        i = string_end(b, i);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            return i + 1;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            b.len()
        }
        _ => {
            let mut i = start;
            while i < b.len() && !matches!(b[i], b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n')
            {
                i += 1;
            }
            i
        }
    }
}

/// A fragment of a secret this long (from the secret's start) is masked as
/// well as the whole secret: a capture cap, or a provider echoing a cut
/// prompt, can end a body inside a key or token.
pub const FRAGMENT_MIN: usize = 12;

/// Replaces every occurrence of the known secrets (the token, the provider
/// key) with `[REDACTED]`, and every run of [`FRAGMENT_MIN`] or more bytes
/// that starts like one of them (a cut copy). Applied by the finish hook to
/// path, query, header values and captured bodies (text and the bytes
/// behind a base64 capture). Built once per record: the searchers are set
/// up once for all its fields.
pub struct Scrubber<'a> {
    secrets: Vec<Secret<'a>>,
}

struct Secret<'a> {
    bytes: &'a [u8],
    /// What a search looks for: the first [`FRAGMENT_MIN`] bytes.
    prefix: &'a [u8],
    /// False when an earlier secret has the same prefix (a token's escaped
    /// forms): its searches would find the same places, already handled.
    searched: bool,
    /// For long texts (bodies), built on first use: most records have only
    /// a short path and query, where setting up a searcher costs more than
    /// the search.
    finder: std::cell::OnceCell<memchr::memmem::Finder<'a>>,
}

/// Texts shorter than this are searched by first byte and comparison.
const SHORT_TEXT: usize = 256;

impl Secret<'_> {
    fn find(&self, hay: &[u8]) -> Option<usize> {
        if hay.len() >= SHORT_TEXT {
            return self
                .finder
                .get_or_init(|| memchr::memmem::Finder::new(self.prefix))
                .find(hay);
        }
        let mut from = 0;
        while let Some(i) = memchr::memchr(self.prefix[0], hay.get(from..)?) {
            let at = from + i;
            if hay[at..].starts_with(self.prefix) {
                return Some(at);
            }
            from = at + 1;
        }
        None
    }
}

impl<'a> Scrubber<'a> {
    pub fn new(secrets: &[&'a str]) -> Scrubber<'a> {
        let mut out: Vec<Secret<'a>> = Vec::with_capacity(secrets.len());
        for s in secrets.iter().map(|s| s.as_bytes()) {
            if s.is_empty() || out.iter().any(|o| o.bytes == s) {
                continue;
            }
            let prefix = &s[..s.len().min(FRAGMENT_MIN)];
            out.push(Secret {
                bytes: s,
                prefix,
                searched: !out.iter().any(|o| o.prefix == prefix),
                finder: std::cell::OnceCell::new(),
            });
        }
        Scrubber { secrets: out }
    }

    /// Scrubs `text` in place (copies only when something is found: the
    /// usual case is nothing, on every field of every record).
    pub fn text(&self, text: &mut String) {
        if !self.found_in(text.as_bytes()) {
            return;
        }
        let mut bytes = std::mem::take(text).into_bytes();
        self.scrub(&mut bytes, true);
        // Runs end on character boundaries, so this stays UTF-8.
        *text = String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    }

    /// Scrubs raw bytes (a binary capture); true when something was masked.
    pub fn bytes(&self, bytes: &mut Vec<u8>) -> bool {
        if !self.found_in(bytes) {
            return false;
        }
        self.scrub(bytes, false);
        true
    }

    fn found_in(&self, hay: &[u8]) -> bool {
        self.secrets
            .iter()
            .any(|s| s.searched && s.find(hay).is_some())
    }

    fn scrub(&self, bytes: &mut Vec<u8>, text: bool) {
        for s in self.secrets.iter().filter(|s| s.searched) {
            let mut from = 0;
            while let Some(i) = s.find(&bytes[from..]) {
                let start = from + i;
                // The longest copy of any secret starting here: secrets may
                // share a beginning (a token and its escaped form).
                let run = self
                    .secrets
                    .iter()
                    .map(|o| copy_len(&bytes[start..], o.bytes, text))
                    .max()
                    .unwrap_or(0);
                if run == 0 {
                    from = start + 1;
                    continue;
                }
                bytes.splice(start..start + run, REDACTED.bytes());
                from = start + REDACTED.len();
            }
        }
    }
}

/// How many bytes at the start of `hay` are a copy of `secret` long enough
/// to mask (the whole secret, or a cut copy of [`FRAGMENT_MIN`] bytes or
/// more); 0 when none.
fn copy_len(hay: &[u8], secret: &[u8], text: bool) -> usize {
    let mut run = hay
        .iter()
        .zip(secret.iter())
        .take_while(|(a, b)| a == b)
        .count();
    if text {
        // A cut inside a multi-byte character keeps the character whole
        // (the run then ends before it).
        while run > 0 && hay.get(run).is_some_and(|b| b & 0xC0 == 0x80) {
            run -= 1;
        }
    }
    if run < secret.len().min(FRAGMENT_MIN) {
        0
    } else {
        run
    }
}

/// [`Scrubber::text`] for one string.
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut text = text.to_owned();
    Scrubber::new(secrets).text(&mut text);
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use http::HeaderValue;

    #[test]
    fn credential_headers_are_masked_and_others_kept() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer sk-live"));
        h.insert("x-api-key", HeaderValue::from_static("k1"));
        h.insert("api-key", HeaderValue::from_static("k2"));
        h.insert("x-goog-api-key", HeaderValue::from_static("k3"));
        h.insert("cookie", HeaderValue::from_static("a=b"));
        h.append("set-cookie", HeaderValue::from_static("s=1"));
        h.append("set-cookie", HeaderValue::from_static("s=2"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("x-custom-secret", HeaderValue::from_static("zzz"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        let out = redact_headers(&h, &["X-Custom-Secret".to_owned()]);
        assert_eq!(out.len(), 10);
        for (n, v) in &out {
            if n == "content-type" {
                assert_eq!(v, "application/json");
            } else {
                assert_eq!(v, REDACTED, "{n}");
            }
        }
        let joined = format!("{out:?}");
        for s in [
            "sk-live", "k1", "k2", "k3", "a=b", "s=1", "s=2", "Basic", "zzz",
        ] {
            assert!(!joined.contains(s), "{s} leaked");
        }
    }

    #[test]
    fn nested_json_fields_are_masked_keeping_layout() {
        let text = r#"{"model":"gpt-4o", "api_key": "sk-1",
  "meta": {"ApiKey": 42, "list": [{"token": {"a": [1, "}"]}}, {"password":null}]},
  "messages": [{"role":"user","content":"my key is fine"}], "custom_field": "c", "k\u0065y": "esc"}"#;
        let out = redact_json_body(text, &["custom_field".to_owned()]);
        assert!(out.contains(r#""model":"gpt-4o""#));
        assert!(out.contains(r#""api_key": "[REDACTED]""#));
        assert!(out.contains(r#""ApiKey": "[REDACTED]""#));
        assert!(out.contains(r#""token": "[REDACTED]""#));
        assert!(out.contains(r#""password":"[REDACTED]""#));
        assert!(out.contains(r#""custom_field": "[REDACTED]""#));
        assert!(out.contains(r#""k\u0065y": "[REDACTED]""#));
        assert!(out.contains("my key is fine"));
        assert!(!out.contains("sk-1") && !out.contains("esc\""));
        // still valid JSON
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["meta"]["list"][0]["token"], REDACTED);
        assert_eq!(v["meta"]["ApiKey"], REDACTED);
    }

    #[test]
    fn non_json_is_unchanged_but_lenient_masks_cut_json() {
        let t = "api_key=sk-1&token=x";
        assert_eq!(redact_json_body(t, &[]), t);
        let cut = r#"{"messages":[{"content":"hi"}],"api_key":"sk-abcdef"#;
        assert_eq!(redact_json_body(cut, &[]), cut);
        let out = redact_json_lenient(cut, &[]);
        assert!(!out.contains("sk-abc"), "{out}");
        assert!(out.ends_with(r#""api_key":"[REDACTED]""#));
    }

    #[test]
    fn form_fields_are_masked_by_the_same_names() {
        let extra = vec!["user_secret".to_owned()];
        for (form, want) in [
            (
                "grant_type=password&password=hunter2&scope=a+b",
                "grant_type=password&password=[REDACTED]&scope=a+b",
            ),
            ("API_KEY=sk-1&x=1", "API_KEY=[REDACTED]&x=1"),
            ("api%5Fkey=sk-1&api+key=2", "api%5Fkey=[REDACTED]&api+key=2"),
            (
                "user[password]=p&a[b][token]=t&user[name]=n",
                "user[password]=[REDACTED]&a[b][token]=[REDACTED]&user[name]=n",
            ),
            ("user%5Bsecret%5D=s", "user%5Bsecret%5D=[REDACTED]"),
            ("user_secret=s3&token", "user_secret=[REDACTED]&token"),
            // cut by the cap inside the value
            ("model=m&token=sk-abc", "model=m&token=[REDACTED]"),
            ("", ""),
            ("&&key=&", "&&key=[REDACTED]&"),
        ] {
            assert_eq!(redact_form_fields(form, &extra), want, "{form}");
        }
    }

    #[test]
    fn a_token_and_its_dot_escaped_copies_are_masked_whole() {
        let t = "eyJhbGciOiJkaXIi.c7XNuaAAAAAAAAAA.bo89Lax8tK04fTaFx4WBSw";
        let (upper, lower) = (t.replace('.', "%2E"), t.replace('.', "%2e"));
        let text = format!("a {t} b {upper} c {lower} d");
        // Whatever the order: secrets sharing a beginning, the longest wins.
        for secrets in [[t, &upper, &lower], [&upper, &lower, t]] {
            assert_eq!(
                scrub(&text, &secrets),
                "a [REDACTED] b [REDACTED] c [REDACTED] d"
            );
        }
    }

    #[test]
    fn scrub_replaces_every_occurrence() {
        let t = "/v1/tok123/chat?x=tok123&k=sk-AAA";
        assert_eq!(
            scrub(t, &["tok123", "sk-AAA", ""]),
            "/v1/[REDACTED]/chat?x=[REDACTED]&k=[REDACTED]"
        );
        assert_eq!(scrub("nothing", &["zz"]), "nothing");
    }

    #[test]
    fn cut_copies_of_a_secret_are_masked_too() {
        let key = "sk-mock-SUPERSECRET-4242";
        // The capture ended inside the key; the provider echoed a cut copy.
        assert_eq!(scrub("...AAAsk-mock-SUPERSEC", &[key]), "...AAA[REDACTED]");
        assert_eq!(
            scrub("echo: sk-mock-SUPERSECRE and more", &[key]),
            "echo: [REDACTED] and more"
        );
        // Shorter than FRAGMENT_MIN: a prefix that common is no secret.
        assert_eq!(scrub("sk-mock-SUP", &[key]), "sk-mock-SUP");
        // A short secret is masked whole only.
        assert_eq!(scrub("a tok1 tok", &["tok1"]), "a [REDACTED] tok");
        // A cut inside a multi-byte character leaves valid text.
        let wide = "ключ-секрет-очень-длинный";
        let cut = &wide[..wide.char_indices().nth(15).unwrap().0];
        let out = scrub(&format!("x{cut}ü"), &[wide]);
        assert_eq!(out, "x[REDACTED]ü");
    }

    #[test]
    fn long_and_short_texts_are_searched_alike() {
        let key = "sk-mock-SUPERSECRET-4242";
        for pad in [0, 10, SHORT_TEXT, 5000] {
            let text = format!(
                "{}{key}|{}sk-mock-SUPERSECR",
                "e".repeat(pad),
                "s".repeat(pad)
            );
            let want = format!(
                "{}[REDACTED]|{}[REDACTED]",
                "e".repeat(pad),
                "s".repeat(pad)
            );
            assert_eq!(scrub(&text, &[key, key, ""]), want, "pad {pad}");
        }
    }

    #[test]
    fn binary_captures_are_scrubbed_bytewise() {
        let key = "sk-mock-SUPERSECRET-4242";
        let mut b = b"\xff\xfe\x00binary sk-mock-SUPERSECRET-4242 and sk-mock-SUPERS\x00".to_vec();
        assert!(Scrubber::new(&[key]).bytes(&mut b));
        assert_eq!(
            b,
            b"\xff\xfe\x00binary [REDACTED] and [REDACTED]\x00".to_vec()
        );
        let mut clean = b"\x00\x01".to_vec();
        assert!(!Scrubber::new(&[key]).bytes(&mut clean));
    }

    #[test]
    fn token_like_query_values_are_masked_under_any_name() {
        let jwe = format!("eyJhbGciOiJkaXIi{}.{}", "x".repeat(60), "y".repeat(30));
        let mut q = format!("a=1&TOKEN={jwe}&%74oken={jwe}&b=eyJshort");
        token_like_query_values(&mut q);
        assert_eq!(q, "a=1&TOKEN=[REDACTED]&%74oken=[REDACTED]&b=eyJshort");
        let mut plain = "a=1&b=2".to_string();
        token_like_query_values(&mut plain);
        assert_eq!(plain, "a=1&b=2");
    }

    #[test]
    fn escaped_bare_and_legacy_tokens_are_masked() {
        let jwe = format!("eyJhbGciOiJkaXIi{}.{}", "x".repeat(60), "y".repeat(30));
        let dots_escaped = jwe.replace('.', "%2E");
        let e_escaped = format!("%65{}", &jwe[1..]);
        let legacy = "Ab-_9".repeat(30);
        let mut q =
            format!("f={dots_escaped}&g={e_escaped}&h=Bearer%20{jwe}&{jwe}&l={legacy}&keep=abc");
        token_like_query_values(&mut q);
        assert_eq!(
            q,
            "f=[REDACTED]&g=[REDACTED]&h=[REDACTED]&[REDACTED]&l=[REDACTED]&keep=abc"
        );

        let mut path = format!("/relayapi/v1/{e_escaped}/x/{legacy}/models/gpt-4o:stream");
        token_like_path_segments(&mut path);
        assert_eq!(
            path,
            "/relayapi/v1/[REDACTED]/x/[REDACTED]/models/gpt-4o:stream"
        );

        // What must stay: ids, hashes, long prose.
        for kept in [
            "file-abc123",
            &"0123456789abcdef".repeat(4), // a 64-hex rai_hash
            "gemini-1.5-pro-latest:generateContent",
            &"word ".repeat(40),
            "eyJ-but-short",
        ] {
            assert!(!looks_like_token(kept), "{kept}");
        }
        assert!(looks_like_token(&jwe[..JWE_RUN_MIN]));
        assert!(!looks_like_token(&jwe[..JWE_RUN_MIN - 1]));
    }
}
