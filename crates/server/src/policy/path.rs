//! Normalising the request path of a `paths`-scoped token, so that what is
//! checked against the token's prefixes is exactly what the provider gets.
//!
//! Input: the raw (still percent-encoded) path after the base path and the
//! token, without its leading `/`. Steps, per `/`-separated segment:
//!
//! 1. Percent-escapes are decoded when they stand for an unreserved
//!    character (`A–Z a–z 0–9 - . _ ~`, any hex case: `%2e`, `%2E`, `%41`);
//!    every other escape is kept, upper-cased (`%3a` → `%3A`).
//! 2. Refused outright: an escape of `/` or `\` (`%2f`, `%5C`), of NUL or any
//!    control character, a malformed escape (`%`, `%g1`), a raw `\`, and
//!    any byte that is not an RFC 3986 `pchar`.
//! 3. Dot segments are resolved as in RFC 3986 §5.2.4: `.` disappears, `..`
//!    removes the segment before it; a `..` with nothing left to remove
//!    would leave the base path and is refused.
//! 4. Empty segments (`a//b`, a leading `/`) are refused; one trailing `/`
//!    is kept (`models/` stays `models/`).
//!
//! The caller answers any refusal with `path_not_allowed` (403): a path
//! that does not normalise cleanly is not in any prefix.

use relayapi_token::scope::is_plain_pchar;

/// Why a path does not normalise (kept for tests and debugging; the client
/// only ever sees `path_not_allowed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `%2f`, `%5c`, `%00`, another control character, or a bad escape.
    ForbiddenEscape,
    /// A raw byte outside `pchar` (backslash, space, …).
    ForbiddenByte,
    /// `..` above the base path.
    Escapes,
    /// `//` or a leading `/`.
    EmptySegment,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes one segment's unreserved escapes (see the module docs).
fn normalise_segment(seg: &str) -> Result<String, PathError> {
    let bytes = seg.as_bytes();
    let mut out = String::with_capacity(seg.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::ForbiddenEscape);
            };
            let decoded = hi << 4 | lo;
            if decoded == b'/' || decoded == b'\\' || decoded < 0x20 || decoded == 0x7f {
                return Err(PathError::ForbiddenEscape);
            }
            if is_unreserved(decoded) {
                out.push(char::from(decoded));
            } else {
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[usize::from(hi)]));
                out.push(char::from(b"0123456789ABCDEF"[usize::from(lo)]));
            }
            i += 3;
        } else if is_plain_pchar(b) {
            out.push(char::from(b));
            i += 1;
        } else {
            return Err(PathError::ForbiddenByte);
        }
    }
    Ok(out)
}

/// Whether `raw` could change under [`normalise`] or be refused by it: it
/// holds an escape, a backslash, or a `.`/`..` segment. A cheap scan, so
/// that tokens without `paths` pay for normalising only on such paths.
pub fn may_need_normalising(raw: &str) -> bool {
    raw.bytes()
        .any(|b| b == b'%' || b == b'\\' || b.is_ascii_control())
        || raw.split('/').any(|seg| seg == "." || seg == "..")
}

/// The normalised form of `raw` (see the module docs), or why it has none.
pub fn normalise(raw: &str) -> Result<String, PathError> {
    if raw.is_empty() {
        return Ok(String::new());
    }
    let (body, trailing_slash) = match raw.strip_suffix('/') {
        Some(body) => (body, true),
        None => (raw, false),
    };
    let mut out: Vec<String> = Vec::new();
    // A trailing `.`/`..` segment names a directory: keep the slash after it.
    let mut ends_in_dir = trailing_slash;
    for seg in body.split('/') {
        if seg.is_empty() {
            return Err(PathError::EmptySegment);
        }
        let seg = normalise_segment(seg)?;
        ends_in_dir = trailing_slash;
        match seg.as_str() {
            "." => ends_in_dir = true,
            ".." => {
                out.pop().ok_or(PathError::Escapes)?;
                ends_in_dir = true;
            }
            _ => out.push(seg),
        }
    }
    let mut path = out.join("/");
    if ends_in_dir && !path.is_empty() {
        path.push('/');
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn plain_paths_are_unchanged() {
        for p in [
            "chat/completions",
            "models",
            "models/",
            "v1beta/models/gemini-1.5-flash:streamGenerateContent",
            "v1/messages",
            "",
        ] {
            assert_eq!(normalise(p).unwrap(), p, "{p}");
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_others_uppercased() {
        assert_eq!(
            normalise("ch%61t/completion%73").unwrap(),
            "chat/completions"
        );
        assert_eq!(normalise("a%3ab").unwrap(), "a%3Ab");
        assert_eq!(normalise("a%20b").unwrap(), "a%20b");
        assert_eq!(normalise("%7E").unwrap(), "~");
    }

    #[test]
    fn dot_segments_are_resolved_inside_the_base() {
        assert_eq!(normalise("chat/./completions").unwrap(), "chat/completions");
        assert_eq!(
            normalise("chat/x/../completions").unwrap(),
            "chat/completions"
        );
        assert_eq!(normalise("chat/completions/..").unwrap(), "chat/");
        assert_eq!(normalise("a/%2e%2E/b").unwrap(), "b");
        assert_eq!(normalise("a/.%2e/b").unwrap(), "b");
        assert_eq!(normalise("a/%2E/b").unwrap(), "a/b");
        // `...` is an ordinary segment.
        assert_eq!(normalise("a/.../b").unwrap(), "a/.../b");
    }

    #[test]
    fn escapes_and_tricks_are_refused() {
        for (p, why) in [
            ("../admin", PathError::Escapes),
            ("chat/../../admin", PathError::Escapes),
            ("%2e%2e/admin", PathError::Escapes),
            ("%2E%2e/admin", PathError::Escapes),
            ("..", PathError::Escapes),
            ("chat//completions", PathError::EmptySegment),
            ("/chat/completions", PathError::EmptySegment),
            ("chat%2fcompletions", PathError::ForbiddenEscape),
            ("chat%2Fcompletions", PathError::ForbiddenEscape),
            ("chat%5ccompletions", PathError::ForbiddenEscape),
            ("chat%00", PathError::ForbiddenEscape),
            ("chat%0a", PathError::ForbiddenEscape),
            ("chat%", PathError::ForbiddenEscape),
            ("chat%2", PathError::ForbiddenEscape),
            ("chat%zz", PathError::ForbiddenEscape),
            ("chat\\..\\admin", PathError::ForbiddenByte),
            ("chat completions", PathError::ForbiddenByte),
            ("chat\"x", PathError::ForbiddenByte),
        ] {
            assert_eq!(normalise(p), Err(why), "{p}");
        }
    }
}
