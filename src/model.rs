//! Validated request values: ids, scopes, HTTP methods and request paths, and the
//! limits they are held to.
//!
//! Everything a caller sends passes through here before it reaches the evaluator, which
//! then trusts it. Validation borrows from the input and does not allocate unless it
//! fails.

use std::fmt;

/// Limits on request values. Exceeding one is invalid input, never a decision.
pub mod limits {
    /// Longest tenant id, in bytes.
    pub const TENANT_ID: usize = 128;
    /// Longest subject id, in bytes.
    pub const SUBJECT_ID: usize = 256;
    /// Longest role, group or permission id, in bytes.
    pub const NAME: usize = 128;
    /// Longest scope, in bytes.
    pub const SCOPE: usize = 1024;
    /// Longest request path (query string included), in bytes.
    pub const PATH: usize = 4096;
    /// Most segments in a request path or scope. Bounds the matcher's recursion.
    pub const SEGMENTS: usize = 128;
    /// Longest HTTP method token, in bytes.
    pub const METHOD: usize = 32;
}

/// Why a request value is invalid. The caller adds the field name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// A required value is empty.
    #[error("is required")]
    Empty,
    /// A value is longer than its limit.
    #[error("is longer than {limit} bytes")]
    TooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// A value has more segments than allowed.
    #[error("has more than {limit} segments")]
    TooManySegments {
        /// The limit.
        limit: usize,
    },
    /// A list has more items than allowed.
    #[error("has more than {limit} items")]
    TooManyItems {
        /// The limit.
        limit: usize,
    },
    /// A value has a character it may not have.
    #[error("has a character that is not allowed ({allowed})")]
    BadCharacter {
        /// What is allowed.
        allowed: &'static str,
    },
    /// A scope or path has an empty, `.` or `..` segment, or is otherwise malformed.
    #[error("{0}")]
    Malformed(&'static str),
}

const ID_CHARS: &str = "no whitespace or control characters";
const NAME_CHARS: &str = "letters, digits, `_`, `.`, `:` and `-`";

fn check_len(s: &str, limit: usize) -> Result<(), InputError> {
    if s.is_empty() {
        Err(InputError::Empty)
    } else if s.len() > limit {
        Err(InputError::TooLong { limit })
    } else {
        Ok(())
    }
}

fn is_id_char(c: char) -> bool {
    !c.is_whitespace() && !c.is_control()
}

/// A tenant id: non-empty, at most [`limits::TENANT_ID`] bytes, no whitespace or
/// control characters.
pub fn tenant_id(s: &str) -> Result<&str, InputError> {
    check_len(s, limits::TENANT_ID)?;
    if s.chars().all(is_id_char) {
        Ok(s)
    } else {
        Err(InputError::BadCharacter { allowed: ID_CHARS })
    }
}

/// A subject or group id: like a tenant id, at most [`limits::SUBJECT_ID`] bytes.
/// (An empty subject in a request means anonymous; callers handle that before this.)
pub fn subject_id(s: &str) -> Result<&str, InputError> {
    check_len(s, limits::SUBJECT_ID)?;
    if s.chars().all(is_id_char) {
        Ok(s)
    } else {
        Err(InputError::BadCharacter { allowed: ID_CHARS })
    }
}

/// A role or permission name: `[A-Za-z0-9_.:-]+`, at most [`limits::NAME`] bytes.
pub fn name(s: &str) -> Result<&str, InputError> {
    check_len(s, limits::NAME)?;
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
    {
        Ok(s)
    } else {
        Err(InputError::BadCharacter {
            allowed: NAME_CHARS,
        })
    }
}

/// A scope: `""` (the tenant root) or segments joined by `/`, without leading or
/// trailing slash; no empty, `.` or `..` segment.
pub fn scope(s: &str) -> Result<&str, InputError> {
    if s.is_empty() {
        return Ok(s);
    }
    if s.len() > limits::SCOPE {
        return Err(InputError::TooLong {
            limit: limits::SCOPE,
        });
    }
    if s.starts_with('/') || s.ends_with('/') {
        return Err(InputError::Malformed(
            "is written without leading or trailing slash, e.g. `workspaces/ws-1`; the tenant root is the empty string",
        ));
    }
    let mut segments = 0;
    for seg in s.split('/') {
        segments += 1;
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(InputError::Malformed("has an empty, `.` or `..` segment"));
        }
        if !seg.chars().all(is_id_char) {
            return Err(InputError::BadCharacter { allowed: ID_CHARS });
        }
    }
    if segments > limits::SEGMENTS {
        return Err(InputError::TooManySegments {
            limit: limits::SEGMENTS,
        });
    }
    Ok(s)
}

/// Whether an assignment at scope `outer` applies at scope `inner`: `outer` is the root,
/// equal to `inner`, or a whole-segment prefix of it (`a/b` covers `a/b/c`, not `a/bc`).
pub fn scope_covers(outer: &str, inner: &str) -> bool {
    outer.is_empty()
        || (inner.len() >= outer.len()
            && inner.starts_with(outer)
            && (inner.len() == outer.len() || inner.as_bytes().get(outer.len()) == Some(&b'/')))
}

/// A request path made ready for matching: the query string (and any fragment) removed,
/// one trailing slash removed (except for `/` itself), every segment checked.
pub fn request_path(s: &str) -> Result<&str, InputError> {
    if s.is_empty() {
        return Err(InputError::Empty);
    }
    if s.len() > limits::PATH {
        return Err(InputError::TooLong {
            limit: limits::PATH,
        });
    }
    let bytes = s.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(InputError::Malformed("must be absolute (start with `/`)"));
    }
    // One pass over the bytes (this runs on every route check): where the path ends (at
    // `?` or `#`), each segment's length and whether it is all dots, and the characters.
    // The first segment with a problem decides which error is reported.
    let mut end = bytes.len();
    let mut segments = 0usize;
    let (mut seg_len, mut seg_dots) = (0usize, 0usize);
    // The index of the first segment that is empty, `.` or `..`, and of the first one with
    // a space or control character.
    let (mut dots_at, mut char_at) = (None::<usize>, None::<usize>);
    let mut prev = b'/';
    for (i, &b) in bytes.iter().enumerate().skip(1) {
        match b {
            b'?' | b'#' => {
                end = i;
                break;
            }
            b'/' => {
                if dots_at.is_none() && (seg_len == 0 || (seg_len == seg_dots && seg_dots <= 2)) {
                    dots_at = Some(segments);
                }
                segments += 1;
                seg_len = 0;
                seg_dots = 0;
            }
            _ => {
                // Spaces and control characters: C0, DEL, and C1 (U+0080..U+009F, which
                // UTF-8 writes as 0xC2 0x80..0x9F), as `char::is_control` has them.
                if char_at.is_none()
                    && (b <= b' ' || b == 0x7f || (prev == 0xc2 && (0x80..=0x9f).contains(&b)))
                {
                    char_at = Some(segments);
                }
                seg_len += 1;
                seg_dots += usize::from(b == b'.');
            }
        }
        prev = b;
    }
    let path = s.get(..end).unwrap_or(s);
    // `//` is `/` with its insignificant trailing slash.
    if path == "/" || path == "//" {
        return Ok(path.get(..1).unwrap_or(path));
    }
    // The last segment; when the path ends with `/` it is that insignificant trailing
    // slash (the segment before it was closed there).
    if seg_len > 0 {
        if dots_at.is_none() && seg_len == seg_dots && seg_dots <= 2 {
            dots_at = Some(segments);
        }
        segments += 1;
    }
    match (dots_at, char_at) {
        (Some(d), c) if c.is_none_or(|c| d <= c) => {
            return Err(InputError::Malformed("has an empty, `.` or `..` segment"));
        }
        (_, Some(_)) => {
            return Err(InputError::BadCharacter {
                allowed: "no spaces or control characters",
            });
        }
        _ => {}
    }
    if segments > limits::SEGMENTS {
        return Err(InputError::TooManySegments {
            limit: limits::SEGMENTS,
        });
    }
    Ok(path.strip_suffix('/').unwrap_or(path))
}

/// Methods with a bit of their own in a [`MethodSet`]; others are kept by name.
const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];
const ANY_BIT: u16 = 1 << 15;

/// An HTTP method of a request: an upper-case token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Method<'a> {
    text: &'a str,
    /// The method's bit, or 0 for a method without one.
    bit: u16,
}

impl<'a> Method<'a> {
    /// Parses an upper-case HTTP method token (`GET`, `PROPFIND`, ...).
    pub fn parse(s: &'a str) -> Result<Self, InputError> {
        check_len(s, limits::METHOD)?;
        if !s
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            || !s.as_bytes().first().is_some_and(u8::is_ascii_uppercase)
        {
            return Err(InputError::BadCharacter {
                allowed: "an upper-case HTTP method token such as `GET`",
            });
        }
        let bit = KNOWN_METHODS
            .iter()
            .position(|m| *m == s)
            .map_or(0, |i| 1 << i);
        Ok(Method { text: s, bit })
    }

    /// The method as written.
    pub fn as_str(&self) -> &'a str {
        self.text
    }
}

impl fmt::Display for Method<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text)
    }
}

/// The methods a rule or endpoint entry allows: a bit per common method, `*` as a bit,
/// others by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MethodSet {
    bits: u16,
    other: Box<[Box<str>]>,
}

impl MethodSet {
    /// Builds a set from a rule's `methods` list; `*` means every method.
    pub fn parse<S: AsRef<str>>(methods: &[S]) -> Result<Self, String> {
        if methods.is_empty() {
            return Err("empty `methods` list".to_owned());
        }
        let mut set = MethodSet::default();
        let mut other: Vec<Box<str>> = Vec::new();
        for m in methods {
            let m = m.as_ref();
            if m == "*" {
                set.bits |= ANY_BIT;
                continue;
            }
            let method = Method::parse(m).map_err(|e| format!("method `{m}` {e}"))?;
            if method.bit != 0 {
                set.bits |= method.bit;
            } else if !other.iter().any(|o| **o == *m) {
                other.push(m.into());
            }
        }
        set.other = other.into_boxed_slice();
        Ok(set)
    }

    /// Whether the set allows the method.
    pub fn contains(&self, m: Method<'_>) -> bool {
        self.bits & (ANY_BIT | m.bit) != 0
            || (m.bit == 0 && self.other.iter().any(|o| **o == *m.text))
    }

    /// Whether the two sets share a method (`*` shares every method).
    pub fn intersects(&self, other: &MethodSet) -> bool {
        (self.bits != 0 && other.bits & ANY_BIT != 0)
            || (other.bits != 0 && self.bits & ANY_BIT != 0)
            || (!self.other.is_empty() && other.bits & ANY_BIT != 0)
            || (!other.other.is_empty() && self.bits & ANY_BIT != 0)
            || self.bits & other.bits != 0
            || self.other.iter().any(|m| other.other.contains(m))
    }

    /// Adds every method of `other`.
    pub fn union_with(&mut self, other: &MethodSet) {
        self.bits |= other.bits;
        if !other.other.is_empty() {
            let mut v: Vec<Box<str>> = self.other.to_vec();
            for m in other.other.iter() {
                if !v.contains(m) {
                    v.push(m.clone());
                }
            }
            self.other = v.into_boxed_slice();
        }
    }

    /// Whether the set has no method.
    pub fn is_empty(&self) -> bool {
        self.bits == 0 && self.other.is_empty()
    }

    /// The methods of this set that `other` does not have. `*` stays `*` unless `other`
    /// is `*` too: "every method but these" has no written form.
    pub fn without(&self, other: &MethodSet) -> MethodSet {
        if other.bits & ANY_BIT != 0 {
            return MethodSet::default();
        }
        MethodSet {
            bits: self.bits & !other.bits,
            other: self
                .other
                .iter()
                .filter(|m| !other.other.contains(m))
                .cloned()
                .collect(),
        }
    }

    /// The methods as written in a policy: `*`, or tokens in a fixed order.
    pub fn to_strings(&self) -> Vec<String> {
        if self.bits & ANY_BIT != 0 {
            return vec!["*".to_owned()];
        }
        KNOWN_METHODS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.bits & (1 << i) != 0)
            .map(|(_, m)| (*m).to_owned())
            .chain(self.other.iter().map(|m| m.to_string()))
            .collect()
    }
}

impl MethodSet {
    /// Appends the methods as [`MethodSet::to_strings`] lists them, joined with `,`,
    /// without allocating anything but `out`'s growth.
    pub fn write_to(&self, out: &mut String) {
        if self.bits & ANY_BIT != 0 {
            out.push('*');
            return;
        }
        let mut first = true;
        let known = KNOWN_METHODS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.bits & (1 << i) != 0)
            .map(|(_, m)| *m);
        for m in known.chain(self.other.iter().map(|m| &**m)) {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(m);
        }
    }
}

impl fmt::Display for MethodSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        self.write_to(&mut s);
        f.write_str(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The straightforward form `request_path` replaced, kept as its reference.
    fn request_path_reference(s: &str) -> Result<&str, InputError> {
        if s.is_empty() {
            return Err(InputError::Empty);
        }
        if s.len() > limits::PATH {
            return Err(InputError::TooLong {
                limit: limits::PATH,
            });
        }
        let end = s.find(['?', '#']).unwrap_or(s.len());
        let path = &s[..end];
        if !path.starts_with('/') {
            return Err(InputError::Malformed("must be absolute (start with `/`)"));
        }
        let path = match path.strip_suffix('/') {
            Some(p) if !p.is_empty() => p,
            _ => path,
        };
        if path == "/" {
            return Ok(path);
        }
        let mut segments = 0;
        for seg in path.split('/').skip(1) {
            segments += 1;
            if seg.is_empty() || seg == "." || seg == ".." {
                return Err(InputError::Malformed("has an empty, `.` or `..` segment"));
            }
            if seg.chars().any(|c| c.is_control() || c == ' ') {
                return Err(InputError::BadCharacter {
                    allowed: "no spaces or control characters",
                });
            }
        }
        if segments > limits::SEGMENTS {
            return Err(InputError::TooManySegments {
                limit: limits::SEGMENTS,
            });
        }
        Ok(path)
    }

    #[test]
    fn request_path_agrees_with_its_reference_on_random_paths() {
        // Fixed seed, bounded size: 200,000 paths of up to 12 pieces.
        let pieces = [
            "/", "/", "/", ".", "..", "a", "b", " ", "?", "#", "\t", "\u{7f}", "\u{85}", "\u{a0}",
            "\u{e9}", "x.y",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..200_000 {
            let n = (next() % 13) as usize;
            let mut p = String::new();
            for _ in 0..n {
                p.push_str(pieces[(next() % pieces.len() as u64) as usize]);
            }
            assert_eq!(request_path(&p), request_path_reference(&p), "{p:?}");
        }
        for p in [
            "/a".repeat(128),
            "/a".repeat(129),
            format!("{}/", "/a".repeat(128)),
        ] {
            assert_eq!(request_path(&p), request_path_reference(&p), "{p:?}");
        }
    }

    #[test]
    fn request_paths_are_normalized_or_rejected() {
        assert_eq!(request_path("/chats/"), Ok("/chats"));
        assert_eq!(request_path("/chats/?limit=5"), Ok("/chats"));
        assert_eq!(request_path("/chats?x=/y/"), Ok("/chats"));
        assert_eq!(request_path("/"), Ok("/"));
        assert_eq!(request_path("/?q"), Ok("/"));
        assert_eq!(request_path("/a/b%2Fc"), Ok("/a/b%2Fc"));
        assert!(request_path("").is_err());
        assert!(request_path("chats").is_err());
        assert!(request_path("/a//b").is_err());
        assert!(request_path("/a/./b").is_err());
        assert!(request_path("/a/../b").is_err());
        assert!(request_path("/a//").is_err());
        assert_eq!(request_path("//"), Ok("/"));
        assert_eq!(request_path("//?x"), Ok("/"));
        assert_eq!(request_path("/a/..."), Ok("/a/..."));
        assert_eq!(request_path("/a/b/?q=/x//y"), Ok("/a/b"));
        assert!(request_path("/a/../").is_err());
        assert!(request_path("/./b").is_err());
        assert!(request_path("/a b").is_err());
        assert!(request_path("/a\tb").is_err());
        assert!(request_path("/a\u{7f}").is_err());
        assert!(request_path("/a\u{85}b").is_err(), "C1 control");
        assert_eq!(request_path("/caf\u{e9}/\u{a0}"), Ok("/caf\u{e9}/\u{a0}"));
        assert_eq!(request_path(&"/a".repeat(128)).map(str::len), Ok(256));
        assert!(request_path(&"/a".repeat(129)).is_err());
        assert_eq!(
            request_path(&format!("{}/", "/a".repeat(128))).map(str::len),
            Ok(256)
        );
        assert!(request_path(&"/a".repeat(200)).is_err());
        assert!(request_path(&format!("/{}", "x".repeat(5000))).is_err());
    }

    #[test]
    fn scopes_are_segment_paths() {
        assert_eq!(scope(""), Ok(""));
        assert_eq!(scope("workspaces/ws-1"), Ok("workspaces/ws-1"));
        assert!(scope("/workspaces").is_err());
        assert!(scope("workspaces/").is_err());
        assert!(scope("a//b").is_err());
        assert!(scope("a/../b").is_err());
        assert!(scope("a b").is_err());
    }

    #[test]
    fn scope_coverage_is_by_whole_segments() {
        assert!(scope_covers("", ""));
        assert!(scope_covers("", "workspaces/ws-1"));
        assert!(scope_covers("workspaces/ws-1", "workspaces/ws-1"));
        assert!(scope_covers(
            "workspaces/ws-1",
            "workspaces/ws-1/projects/p"
        ));
        assert!(!scope_covers("workspaces/ws-1", "workspaces/ws-10"));
        assert!(!scope_covers("workspaces/ws-1", "workspaces"));
        assert!(!scope_covers("workspaces/ws-1", ""));
    }

    #[test]
    fn methods_are_upper_case_tokens() {
        assert!(Method::parse("GET").is_ok());
        assert!(Method::parse("PROPFIND").is_ok());
        assert!(Method::parse("get").is_err());
        assert!(Method::parse("").is_err());
        assert!(Method::parse("G ET").is_err());
        assert!(Method::parse("*").is_err());
    }

    #[test]
    fn method_sets() {
        let get = MethodSet::parse(&["GET"]).unwrap();
        let any = MethodSet::parse(&["*"]).unwrap();
        let ext = MethodSet::parse(&["PROPFIND", "GET"]).unwrap();
        let m = |s| Method::parse(s).unwrap();
        assert!(get.contains(m("GET")));
        assert!(!get.contains(m("HEAD")), "HEAD is not implied by GET");
        assert!(any.contains(m("PROPFIND")));
        assert!(ext.contains(m("PROPFIND")));
        assert!(!ext.contains(m("MKCOL")));
        assert!(get.intersects(&ext));
        assert!(any.intersects(&get));
        assert!(!get.intersects(&MethodSet::parse(&["PUT"]).unwrap()));
        assert!(MethodSet::parse::<&str>(&[]).is_err());
        assert!(MethodSet::parse(&["get"]).is_err());
        assert_eq!(ext.to_strings(), vec!["GET", "PROPFIND"]);
    }

    #[test]
    fn ids_and_names() {
        assert!(tenant_id("acme").is_ok());
        assert!(tenant_id("").is_err());
        assert!(tenant_id("a b").is_err());
        assert!(tenant_id(&"x".repeat(129)).is_err());
        assert!(subject_id("auth0|123").is_ok());
        assert!(name("api_keys.manage").is_ok());
        assert!(name("alan-user").is_ok());
        assert!(name("api keys").is_err());
        assert!(name("a/b").is_err());
    }
}
