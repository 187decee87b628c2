//! The `model` field of a `multipart/form-data` body (OpenAI's audio
//! transcriptions and translations, image edits, …), for the model policy.
//!
//! The relay forwards the body untouched, so what matters is that it reads
//! the same `model` as the provider's parser will. Parsers differ on the
//! edges of the format (bare LF line ends, a preamble, header folding,
//! `name*=` encodings, backslash escapes, duplicate fields), so this reader
//! is strict and fails closed: anything a lenient parser could read
//! differently is [`Malformed`], and the policy answers `invalid_body`. What
//! the official SDKs, browsers' `FormData`, curl and Go's `mime/multipart`
//! write is accepted.

use std::ops::Range;

/// The body cannot be read without ambiguity.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

/// The boundary of a `multipart/form-data` content type; `None` for any
/// other media type, `Err` for a form whose boundary is missing, repeated
/// or not a valid RFC 2046 boundary.
pub fn form_boundary(content_type: &str) -> Option<Result<&str, Malformed>> {
    let mut params = content_type.split(';');
    let mime = params.next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    let mut boundary = None;
    for param in params {
        let Some((key, value)) = param.split_once('=') else {
            return Some(Err(Malformed));
        };
        // RFC 2231 parameters (`boundary*=UTF-8''x`, `boundary*0=x`): Go's
        // `mime.ParseMediaType` and Python's `email` read one as the
        // boundary, so the form would split at another delimiter there.
        if key.contains('*') {
            return Some(Err(Malformed));
        }
        if !key.trim().eq_ignore_ascii_case("boundary") {
            continue;
        }
        if boundary.is_some() {
            return Some(Err(Malformed));
        }
        match unquote(value) {
            Ok(v) => boundary = Some(v),
            Err(e) => return Some(Err(e)),
        }
    }
    Some(boundary.filter(|b| valid_boundary(b)).ok_or(Malformed))
}

/// A parameter's value, trimmed, without its quotes (which must pair).
fn unquote(value: &str) -> Result<&str, Malformed> {
    let value = value.trim();
    match value.strip_prefix('"') {
        Some(quoted) => quoted.strip_suffix('"').ok_or(Malformed),
        None => Ok(value),
    }
}

/// RFC 2046: 1–70 of `bchars`, not ending in a space.
fn valid_boundary(b: &str) -> bool {
    (1..=70).contains(&b.len())
        && !b.ends_with(' ')
        && b.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&c))
}

/// Where the `model` field is in a form's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelField {
    /// The value (the field's whole content).
    pub value: Range<usize>,
    /// The digits of the part's own `Content-Length`, if it has one: a
    /// new value needs a new length.
    length: Option<Range<usize>>,
}

/// Where the `model` field is in `body`, if the form has one.
pub fn find_model(body: &[u8], boundary: &str) -> Result<Option<ModelField>, Malformed> {
    let delimiter = [b"--", boundary.as_bytes()].concat();
    // Every occurrence of the delimiter must be one: at the very start or
    // after CRLF. One after a bare LF (or inside a line) would start a part
    // for a lenient parser and be content for this one.
    let starts: Vec<usize> = memchr::memmem::find_iter(body, &delimiter).collect();
    if starts.first() != Some(&0)
        || starts[1..]
            .iter()
            .any(|&at| at < 2 || &body[at - 2..at] != b"\r\n")
    {
        return Err(Malformed);
    }
    let mut model = None;
    for pair in starts.windows(2) {
        let (open, next) = (pair[0], pair[1]);
        // The line of the delimiter ends right after it (no padding).
        let part_start = open + delimiter.len();
        let part = body.get(part_start..next - 2).ok_or(Malformed)?;
        let part = part.strip_prefix(b"\r\n").ok_or(Malformed)?;
        let offset = next - 2 - part.len();
        if let Some(field) = model_value(part)? {
            if model.is_some() {
                return Err(Malformed);
            }
            let shift = |r: Range<usize>| offset + r.start..offset + r.end;
            model = Some(ModelField {
                value: shift(field.value),
                length: field.length.map(shift),
            });
        }
    }
    // The last delimiter closes the form; at most a CRLF follows it.
    let last = *starts.last().ok_or(Malformed)?;
    let after = &body[last + delimiter.len()..];
    if starts.len() < 2 || !(after == b"--" || after == b"--\r\n") {
        return Err(Malformed);
    }
    Ok(model)
}

/// The value's span within `part` (headers, blank line, content) if the
/// part is the `model` field; `Ok(None)` for any other well-formed part.
fn model_value(part: &[u8]) -> Result<Option<ModelField>, Malformed> {
    let head_end = memchr::memmem::find(part, b"\r\n\r\n").ok_or(Malformed)?;
    let mut name = None;
    let mut has_filename = false;
    let mut other_headers = false;
    let mut plain_text = true;
    let mut length = None;
    let head = std::str::from_utf8(&part[..head_end]).map_err(|_| Malformed)?;
    let mut line_start = 0;
    for line in head.split("\r\n") {
        let at = line_start;
        line_start += line.len() + 2;
        // A bare CR or LF ends a line for some parsers; a leading space
        // continues one (obsolete folding) for others.
        if line.contains(['\r', '\n']) || line.starts_with([' ', '\t']) {
            return Err(Malformed);
        }
        // A NUL (or other control byte) ends a name for a C-string parser.
        if line.chars().any(|c| c.is_ascii_control() && c != '\t') {
            return Err(Malformed);
        }
        let (key, value) = line.split_once(':').ok_or(Malformed)?;
        if key.eq_ignore_ascii_case("content-disposition") {
            if name.is_some() {
                return Err(Malformed);
            }
            let (n, filename) = disposition(value)?;
            name = Some(n);
            has_filename = filename;
        } else if key.eq_ignore_ascii_case("content-type") {
            plain_text &= is_plain_text(value);
        } else if key.eq_ignore_ascii_case("content-length") {
            // OkHttp (Android, the Java/Kotlin SDKs) sends one per part. A
            // parser that honoured a wrong one would read another extent.
            let declared = value.trim();
            let content = part.len() - (head_end + 4);
            if length.is_some()
                || declared.is_empty()
                || !declared.bytes().all(|b| b.is_ascii_digit())
                || declared.parse::<usize>() != Ok(content)
            {
                return Err(Malformed);
            }
            let start = at + key.len() + 1 + (value.len() - value.trim_start().len());
            length = Some(start..start + declared.len());
        } else if key.eq_ignore_ascii_case("content-transfer-encoding") {
            // Identity encodings (Apache HttpClient writes `8bit`) leave
            // the bytes as they are; any other is decoded by some parsers.
            let identity = ["7bit", "8bit", "binary"];
            other_headers |= !identity
                .iter()
                .any(|e| value.trim().eq_ignore_ascii_case(e));
        } else {
            other_headers = true;
        }
    }
    // Every part of a form names its field.
    let name = name.ok_or(Malformed)?;
    if !name.trim().eq_ignore_ascii_case("model") {
        return Ok(None);
    }
    // A file, or a transfer encoding a provider might decode, is not a
    // model name both sides read alike; nor is a differently cased or
    // space-padded name (a provider may fold or trim field names), nor a
    // content type other than UTF-8 text (`multipart/*` and `message/*`
    // make the part a container for Python's `email`, so for `cgi`).
    if name != "model" || has_filename || other_headers || !plain_text {
        return Err(Malformed);
    }
    let value = head_end + 4..part.len();
    std::str::from_utf8(&part[value.clone()]).map_err(|_| Malformed)?;
    Ok(Some(ModelField { value, length }))
}

/// `text/plain`, with at most a UTF-8 (or ASCII) `charset`: the model
/// field's content type, if it has one, as clients that send one write it.
fn is_plain_text(content_type: &str) -> bool {
    let mut params = content_type.split(';');
    let mime = params.next().unwrap_or("").trim();
    mime.eq_ignore_ascii_case("text/plain")
        && params.all(|param| {
            param.split_once('=').is_some_and(|(key, value)| {
                key.trim().eq_ignore_ascii_case("charset")
                    && unquote(value).is_ok_and(|v| {
                        ["utf-8", "us-ascii"]
                            .iter()
                            .any(|c| v.eq_ignore_ascii_case(c))
                    })
            })
        })
}

/// `form-data; name="…"[; filename="…"]`: the name, and whether there is a
/// filename. Quoted values may not hold backslashes or quotes (escaping
/// rules differ); RFC 2231 parameters (`name*=`, and continuations like
/// `name*0=`, which Go's `mime` puts over a plain `name`) are refused.
fn disposition(value: &str) -> Result<(&str, bool), Malformed> {
    let mut params = value.split(';');
    if !params
        .next()
        .is_some_and(|d| d.trim().eq_ignore_ascii_case("form-data"))
    {
        return Err(Malformed);
    }
    let mut name = None;
    let mut filename = false;
    for param in params {
        let (key, v) = param.split_once('=').ok_or(Malformed)?;
        let key = key.trim();
        let v = unquote(v)?;
        if v.contains(['"', '\\']) || key.contains('*') {
            return Err(Malformed);
        }
        if key.eq_ignore_ascii_case("name") {
            if name.replace(v).is_some() {
                return Err(Malformed);
            }
        } else if key.eq_ignore_ascii_case("filename") {
            filename = true;
        }
    }
    name.map(|n| (n, filename)).ok_or(Malformed)
}

/// `body` with the `model` field set to `model`: its value (and the part's
/// `Content-Length`, if any) replaced, or a field added first.
pub fn with_model(body: &[u8], boundary: &str, found: Option<ModelField>, model: &str) -> Vec<u8> {
    match found {
        Some(ModelField {
            value,
            length: Some(length),
        }) => [
            &body[..length.start],
            model.len().to_string().as_bytes(),
            &body[length.end..value.start],
            model.as_bytes(),
            &body[value.end..],
        ]
        .concat(),
        Some(ModelField {
            value,
            length: None,
        }) => [&body[..value.start], model.as_bytes(), &body[value.end..]].concat(),
        None => [
            b"--",
            boundary.as_bytes(),
            b"\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n",
            model.as_bytes(),
            b"\r\n",
            body,
        ]
        .concat(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const B: &str = "XyZ123";

    fn form(parts: &[&str]) -> Vec<u8> {
        let mut body = String::new();
        for p in parts {
            body.push_str(&format!("--{B}\r\n{p}\r\n"));
        }
        body.push_str(&format!("--{B}--\r\n"));
        body.into_bytes()
    }

    fn model_of(body: &[u8]) -> Result<Option<String>, Malformed> {
        find_model(body, B).map(|r| r.map(|f| String::from_utf8(body[f.value].to_vec()).unwrap()))
    }

    const FILE: &str = "Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\0\x01--not-a-boundary";
    const MODEL: &str = "Content-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1";

    #[test]
    fn boundaries_are_read_strictly() {
        assert_eq!(form_boundary("application/json"), None);
        assert_eq!(
            form_boundary("multipart/form-data; boundary=abc"),
            Some(Ok("abc"))
        );
        assert_eq!(
            form_boundary("Multipart/Form-Data; charset=utf-8; Boundary=\"a b:c\""),
            Some(Ok("a b:c"))
        );
        for bad in [
            "multipart/form-data",
            "multipart/form-data; boundary=",
            "multipart/form-data; boundary=a; boundary=b",
            "multipart/form-data; boundary=\"abc",
            "multipart/form-data; boundary=a{b",
            "multipart/form-data; boundary=\"ab \"",
            "multipart/form-data; junk",
            // Go's mime and Python's email read these as the boundary.
            "multipart/form-data; boundary=abc; boundary*=UTF-8''xyz",
            "multipart/form-data; boundary*=UTF-8''xyz; boundary=abc",
            "multipart/form-data; boundary*0=xyz; boundary=abc",
            "multipart/form-data; boundary=abc; charset*=UTF-8''utf-8",
        ] {
            assert_eq!(form_boundary(bad), Some(Err(Malformed)), "{bad}");
        }
        let long = format!("multipart/form-data; boundary={}", "a".repeat(71));
        assert_eq!(form_boundary(&long), Some(Err(Malformed)));
    }

    #[test]
    fn the_model_field_is_found_in_what_sdks_write() {
        assert_eq!(
            model_of(&form(&[FILE, MODEL])),
            Ok(Some("whisper-1".into()))
        );
        assert_eq!(
            model_of(&form(&[MODEL, FILE])),
            Ok(Some("whisper-1".into()))
        );
        // Unquoted name, lower-case header, a Content-Type on the field, no
        // trailing CRLF after the close delimiter.
        let plain = "content-disposition: form-data; name=model\r\nContent-Type: text/plain; charset=utf-8\r\n\r\ngpt-4o-transcribe";
        let mut body = form(&[plain]);
        body.truncate(body.len() - 2);
        assert_eq!(model_of(&body), Ok(Some("gpt-4o-transcribe".into())));
        assert_eq!(model_of(&form(&[FILE])), Ok(None));
        // An empty value is a value (the policy then refuses it).
        let empty = "Content-Disposition: form-data; name=\"model\"\r\n\r\n";
        assert_eq!(model_of(&form(&[empty])), Ok(Some(String::new())));
    }

    #[test]
    fn part_lengths_and_identity_encodings_of_java_clients_are_accepted() {
        // OkHttp: a Content-Length per part; Apache HttpClient: `8bit`.
        let okhttp =
            "Content-Disposition: form-data; name=\"model\"\r\nContent-Length: 9\r\n\r\nwhisper-1";
        let file = "Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\nContent-Length: 4\r\n\r\nRIFF";
        assert_eq!(
            model_of(&form(&[file, okhttp])),
            Ok(Some("whisper-1".into()))
        );
        let apache = "Content-Disposition: form-data; name=\"model\"\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nwhisper-1";
        assert_eq!(model_of(&form(&[apache])), Ok(Some("whisper-1".into())));
        // A length that is not the part's: another extent for a parser
        // that honours it (on any part: a long one could swallow `model`).
        // A forced model keeps the part's length right.
        let body = form(&[file, okhttp]);
        let forced = with_model(
            &body,
            B,
            find_model(&body, B).unwrap(),
            "gpt-4o-mini-transcribe",
        );
        let want = form(&[
            file,
            &okhttp
                .replace("Length: 9", "Length: 22")
                .replace("whisper-1", "gpt-4o-mini-transcribe"),
        ]);
        assert_eq!(
            String::from_utf8_lossy(&forced),
            String::from_utf8_lossy(&want)
        );
        let bad_forms = [
            form(&[&okhttp.replace("Length: 9", "Length: 8")]),
            form(&[&okhttp.replace("Length: 9", "Length: +9")]),
            form(&[&okhttp.replace("Length: 9", "Length:")]),
            form(&[&file.replace("Length: 4", "Length: 400"), okhttp]),
            form(&[&apache.replace("8bit", "base64")]),
        ];
        for bad in bad_forms {
            assert_eq!(
                model_of(&bad),
                Err(Malformed),
                "{}",
                String::from_utf8_lossy(&bad)
            );
        }
    }

    #[test]
    fn anything_a_lenient_parser_could_read_differently_is_malformed() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("two model fields", form(&[MODEL, MODEL])),
            (
                "a differently cased name",
                form(&["Content-Disposition: form-data; name=\"Model\"\r\n\r\nx"]),
            ),
            (
                "a model file",
                form(&["Content-Disposition: form-data; name=\"model\"; filename=\"m\"\r\n\r\nx"]),
            ),
            (
                "an encoded model",
                form(&["Content-Disposition: form-data; name=\"model\"\r\nContent-Transfer-Encoding: base64\r\n\r\nd2hpc3Blci0x"]),
            ),
            (
                "RFC 2231 name",
                form(&["Content-Disposition: form-data; name*=UTF-8''model\r\n\r\nx"]),
            ),
            (
                "an RFC 2231 continuation over a plain name (Go reads `model`)",
                form(&["Content-Disposition: form-data; name=\"file\"; name*0=model\r\n\r\nx", MODEL]),
            ),
            (
                "an escaped quote",
                form(&["Content-Disposition: form-data; name=\"mo\\\"del\"\r\n\r\nx"]),
            ),
            (
                "two dispositions",
                form(&["Content-Disposition: form-data; name=\"a\"\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nx"]),
            ),
            (
                "a folded header",
                form(&["Content-Disposition: form-data;\r\n name=\"model\"\r\n\r\nx"]),
            ),
            (
                "a space-padded name",
                form(&["Content-Disposition: form-data; name=\"model \"\r\n\r\nx", MODEL]),
            ),
            (
                "a NUL in a name",
                form(&["Content-Disposition: form-data; name=\"model\0\"\r\n\r\nx", MODEL]),
            ),
            (
                "a container type on the model",
                form(&["Content-Disposition: form-data; name=\"model\"\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\nx"]),
            ),
            (
                "another charset on the model",
                form(&["Content-Disposition: form-data; name=\"model\"\r\nContent-Type: text/plain; charset=utf-16\r\n\r\nx"]),
            ),
            ("a part without a name", form(&["Content-Type: text/plain\r\n\r\nx"])),
            (
                "not form-data",
                form(&["Content-Disposition: attachment; name=\"model\"\r\n\r\nx"]),
            ),
            (
                "a bare LF delimiter inside a file",
                form(&[&format!("{FILE}\n--{B}\nContent-Disposition: form-data; name=\"model\"\n\ngpt-4o"), MODEL]),
            ),
            (
                "the delimiter inside a line",
                form(&[&format!("{FILE} --{B}\r\n"), MODEL]),
            ),
            (
                "a preamble",
                [b"hello\r\n".as_slice(), &form(&[MODEL])].concat(),
            ),
            ("no close delimiter", format!("--{B}\r\n{MODEL}\r\n").into_bytes()),
            (
                "an epilogue",
                [form(&[MODEL]).as_slice(), b"more text"].concat(),
            ),
            (
                "padding after a delimiter",
                format!("--{B} \r\n{MODEL}\r\n--{B}--").into_bytes(),
            ),
            (
                "a bare LF in a part's headers",
                form(&["Content-Type: text/plain\nContent-Disposition: form-data; name=\"model\"\r\n\r\nx"]),
            ),
            ("a part without headers", format!("--{B}\r\nwhisper-1\r\n--{B}--").into_bytes()),
            ("not a form at all", b"{\"model\":\"x\"}".to_vec()),
            ("empty", Vec::new()),
        ];
        for (what, body) in cases {
            assert_eq!(
                model_of(&body),
                Err(Malformed),
                "{what}: {:?}",
                String::from_utf8_lossy(&body)
            );
        }
        let mut latin1 = form(&["Content-Disposition: form-data; name=\"model\"\r\n\r\nx"]);
        let at = latin1.iter().rposition(|&b| b == b'x').unwrap();
        latin1[at] = 0xE9;
        assert_eq!(model_of(&latin1), Err(Malformed), "a non-UTF-8 model");
    }

    #[test]
    fn no_cut_or_changed_byte_panics_or_moves_the_model_out_of_its_field() {
        let body = form(&[FILE, MODEL]);
        let mut variants: Vec<Vec<u8>> = (0..body.len()).map(|n| body[..n].to_vec()).collect();
        for i in 0..body.len() {
            for b in [b'\r', b'\n', b'-', b'"', b';', b' ', b'\\', 0xFF] {
                let mut v = body.clone();
                v[i] = b;
                variants.push(v);
            }
        }
        for v in variants {
            if let Ok(Some(ModelField { value: span, .. })) = find_model(&v, B) {
                // Whatever was accepted, the value is a field's whole content.
                assert!(
                    v[..span.start].ends_with(b"name=\"model\"\r\n\r\n"),
                    "{v:?}"
                );
                assert!(
                    v[span.end..].starts_with(format!("\r\n--{B}").as_bytes()),
                    "{v:?}"
                );
            }
        }
    }

    #[test]
    fn a_forced_model_replaces_the_value_or_is_added_first() {
        let body = form(&[FILE, MODEL]);
        let found = find_model(&body, B).unwrap();
        let forced = with_model(&body, B, found, "gpt-4o-mini-transcribe");
        assert_eq!(model_of(&forced), Ok(Some("gpt-4o-mini-transcribe".into())));
        assert_eq!(
            forced.len(),
            body.len() - "whisper-1".len() + "gpt-4o-mini-transcribe".len()
        );

        let body = form(&[FILE]);
        let added = with_model(&body, B, None, "whisper-1");
        assert_eq!(model_of(&added), Ok(Some("whisper-1".into())));
        assert!(added.ends_with(&body));
    }
}
