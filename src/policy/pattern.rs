//! Path patterns, their specificity order, and a trie that finds the most specific
//! pattern matching a path without scanning every rule.
//!
//! # Specificity
//! Two patterns that match the same path are compared segment by segment from the left;
//! at the first position where they differ in kind, the kinds rank
//! literal > `*`/`{name}` > end of pattern > `**`. So `/a/b` beats `/a/*`, `/a/*` beats
//! `/a/**`, and `/y` beats `/y/**` for the path `/y`. Patterns of the same kind at every
//! position are *equally* specific (`/a/{id}` and `/a/*`); callers union them.
//!
//! [`Specificity`] is that order as an `Ord` value; [`Matcher`] finds the maximum by
//! walking a trie depth-first in the same order, so the first terminal it accepts is the
//! most specific. Each trie node sits at one depth and is reached through one chain of
//! segments, so a lookup visits each node at most once. No allocation happens during a
//! lookup.

use std::fmt;

/// One segment of a pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Segment {
    /// Exactly this text.
    Literal(Box<str>),
    /// Any one segment: `*` or `{name}`.
    Wildcard,
    /// Zero or more segments: `**`, only last.
    Rest,
}

/// A parsed path pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    segments: Vec<Segment>,
    text: Box<str>,
}

/// Why a pattern is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Does not start with `/`.
    #[error("pattern `{0}` must be absolute (start with `/`)")]
    NotAbsolute(String),
    /// Has an empty, `.` or `..` segment.
    #[error("pattern `{0}` has an empty, `.` or `..` segment")]
    BadSegment(String),
    /// `**` not in the last position.
    #[error("pattern `{0}` has `**` before its last segment")]
    RestNotLast(String),
    /// A segment mixes text with `*`, `{` or `}`.
    #[error("pattern `{pattern}` has segment `{segment}` mixing text with `*` or `{{}}`")]
    MixedSegment {
        /// The pattern.
        pattern: String,
        /// The segment.
        segment: String,
    },
    /// Longer than the path limit.
    #[error("pattern `{0}` is too long")]
    TooLong(String),
}

impl Pattern {
    /// Parses a pattern. One trailing slash is insignificant.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        if text.len() > crate::model::limits::PATH {
            return Err(PatternError::TooLong(text.to_owned()));
        }
        let Some(body) = text.strip_prefix('/') else {
            return Err(PatternError::NotAbsolute(text.to_owned()));
        };
        let body = body.strip_suffix('/').unwrap_or(body);
        let mut segments = Vec::new();
        if !body.is_empty() {
            let parts: Vec<&str> = body.split('/').collect();
            let last = parts.len() - 1;
            for (i, seg) in parts.into_iter().enumerate() {
                let s = match seg {
                    "" | "." | ".." => return Err(PatternError::BadSegment(text.to_owned())),
                    "**" if i == last => Segment::Rest,
                    "**" => return Err(PatternError::RestNotLast(text.to_owned())),
                    "*" => Segment::Wildcard,
                    s if is_parameter(s) => Segment::Wildcard,
                    s if s.contains(['*', '{', '}']) => {
                        return Err(PatternError::MixedSegment {
                            pattern: text.to_owned(),
                            segment: s.to_owned(),
                        });
                    }
                    s => Segment::Literal(s.into()),
                };
                segments.push(s);
            }
        }
        if segments.len() > crate::model::limits::SEGMENTS {
            return Err(PatternError::TooLong(text.to_owned()));
        }
        Ok(Pattern {
            segments,
            text: text.into(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The segments.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Whether the pattern matches a normalized request path (see
    /// [`crate::model::request_path`]). Used by tests and tools; the hot path uses
    /// [`Matcher`].
    pub fn matches(&self, path: &str) -> bool {
        let mut segs = path_segments(path);
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                Segment::Rest => return i + 1 == self.segments.len(),
                Segment::Wildcard => {
                    if segs.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(l) => {
                    if segs.next() != Some(&**l) {
                        return false;
                    }
                }
            }
        }
        segs.next().is_none()
    }

    /// This pattern's rank in the specificity order.
    pub fn specificity(&self) -> Specificity {
        let mut ranks: Vec<u8> = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(_) => Specificity::LITERAL,
                Segment::Wildcard => Specificity::WILDCARD,
                Segment::Rest => Specificity::REST,
            })
            .collect();
        if !matches!(self.segments.last(), Some(Segment::Rest)) {
            ranks.push(Specificity::END);
        }
        Specificity(ranks)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// `{name}`: braces around a non-empty name without braces or `*`.
fn is_parameter(s: &str) -> bool {
    s.strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .is_some_and(|name| !name.is_empty() && !name.contains(['{', '}', '*']))
}

/// A normalized request path split into its segments once, on the stack (no
/// allocation), to be searched in many tries.
#[derive(Clone, Debug)]
pub struct PathSegments<'p> {
    segments: arrayvec::ArrayVec<&'p str, { crate::model::limits::SEGMENTS }>,
    /// More segments than any valid path has: such a path matches nothing.
    overflow: bool,
}

impl<'p> PathSegments<'p> {
    /// Splits a normalized path ([`crate::model::request_path`]).
    pub fn new(path: &'p str) -> Self {
        let mut segments = arrayvec::ArrayVec::new();
        let mut overflow = false;
        for seg in path_segments(path) {
            if segments.try_push(seg).is_err() {
                overflow = true;
                break;
            }
        }
        PathSegments { segments, overflow }
    }
}

/// The segments of a normalized request path (`/` has none).
pub fn path_segments(path: &str) -> impl Iterator<Item = &str> {
    path.strip_prefix('/')
        .unwrap_or(path)
        .split('/')
        .filter(|s| !s.is_empty())
}

/// A pattern's rank among patterns matching the same path: a greater value is more
/// specific. The kinds of the pattern's segments, then the kind of its end, compared
/// lexicographically.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specificity(Vec<u8>);

impl Specificity {
    const LITERAL: u8 = 3;
    const WILDCARD: u8 = 2;
    const END: u8 = 1;
    const REST: u8 = 0;
}

type NodeId = u32;

#[derive(Clone, Debug, Default)]
struct Node {
    /// Literal children, sorted by segment for binary search.
    literals: Vec<(Box<str>, NodeId)>,
    wildcard: Option<NodeId>,
    /// Value of patterns ending here.
    end: Option<usize>,
    /// Value of patterns ending here with `**`.
    rest: Option<usize>,
}

/// A trie from patterns to values `T`. Patterns that are equally specific (same kind at
/// every position, same literals) share one value: [`Matcher::insert`] hands the
/// existing value to a merge function.
#[derive(Clone, Debug)]
pub struct Matcher<T> {
    nodes: Vec<Node>,
    values: Vec<T>,
}

impl<T> Default for Matcher<T> {
    fn default() -> Self {
        Matcher {
            nodes: vec![Node::default()],
            values: Vec::new(),
        }
    }
}

impl<T> Matcher<T> {
    /// Whether no pattern was inserted.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// All values, in insertion order of their first pattern.
    pub fn values(&self) -> &[T] {
        &self.values
    }

    /// Inserts a pattern: `make` builds a new value, `merge` updates the value an equally
    /// specific pattern already has. Returns the error `merge` returns.
    pub fn insert<E>(
        &mut self,
        pattern: &Pattern,
        make: impl FnOnce() -> T,
        merge: impl FnOnce(&mut T) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut node: usize = 0;
        let mut rest = false;
        for seg in pattern.segments() {
            let next = match seg {
                Segment::Rest => {
                    rest = true;
                    break;
                }
                Segment::Wildcard => match self.nodes.get(node).and_then(|n| n.wildcard) {
                    Some(id) => id,
                    None => {
                        let id = self.push_node();
                        if let Some(n) = self.nodes.get_mut(node) {
                            n.wildcard = Some(id);
                        }
                        id
                    }
                },
                Segment::Literal(lit) => {
                    let found = self.nodes.get(node).map(|n| {
                        n.literals
                            .binary_search_by(|(s, _)| (**s).cmp(&**lit))
                            .map(|i| n.literals.get(i).map(|(_, id)| *id))
                    });
                    match found {
                        Some(Ok(Some(id))) => id,
                        Some(Err(pos)) => {
                            let id = self.push_node();
                            if let Some(n) = self.nodes.get_mut(node) {
                                n.literals.insert(pos, (lit.clone(), id));
                            }
                            id
                        }
                        _ => return Ok(()),
                    }
                }
            };
            node = next as usize;
        }
        let Some(n) = self.nodes.get_mut(node) else {
            return Ok(());
        };
        let slot = if rest { &mut n.rest } else { &mut n.end };
        match slot {
            Some(v) => match self.values.get_mut(*v) {
                Some(value) => merge(value),
                None => Ok(()),
            },
            None => {
                *slot = Some(self.values.len());
                self.values.push(make());
                Ok(())
            }
        }
    }

    fn push_node(&mut self) -> NodeId {
        self.nodes.push(Node::default());
        // INVARIANT: tries are built from policies far below u32::MAX segments.
        (self.nodes.len() - 1) as NodeId
    }

    /// The most specific value whose pattern matches `path` and that `accept` takes.
    /// `accept` sees candidates from most to least specific; the first it takes is
    /// returned. `path` must be normalized ([`crate::model::request_path`]).
    pub fn find<'s>(&'s self, path: &str, accept: impl FnMut(&'s T) -> bool) -> Option<&'s T> {
        self.find_in(&PathSegments::new(path), accept)
    }

    /// [`Matcher::find`] on a path already split (split once, search many tries).
    pub fn find_in<'s>(
        &'s self,
        path: &PathSegments<'_>,
        mut accept: impl FnMut(&'s T) -> bool,
    ) -> Option<&'s T> {
        if path.overflow {
            // Longer than any validated path: match nothing rather than a prefix of it.
            return None;
        }
        self.search(0, &path.segments, &mut accept)
    }

    fn search<'s>(
        &'s self,
        node: usize,
        segments: &[&str],
        accept: &mut impl FnMut(&'s T) -> bool,
    ) -> Option<&'s T> {
        let n = self.nodes.get(node)?;
        match segments.split_first() {
            None => {
                // The path is consumed: end of pattern beats `**` (zero segments).
                self.take(n.end, accept)
                    .or_else(|| self.take(n.rest, accept))
            }
            Some((seg, tail)) => {
                // literal > wildcard > `**` (end of pattern cannot match: segments remain).
                if let Ok(i) = n.literals.binary_search_by(|(s, _)| (**s).cmp(seg))
                    && let Some((_, child)) = n.literals.get(i)
                    && let Some(v) = self.search(*child as usize, tail, accept)
                {
                    return Some(v);
                }
                if let Some(child) = n.wildcard
                    && let Some(v) = self.search(child as usize, tail, accept)
                {
                    return Some(v);
                }
                self.take(n.rest, accept)
            }
        }
    }

    fn take<'s>(
        &'s self,
        slot: Option<usize>,
        accept: &mut impl FnMut(&'s T) -> bool,
    ) -> Option<&'s T> {
        let v = self.values.get(slot?)?;
        accept(v).then_some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[test]
    fn parse_rejects_bad_patterns() {
        assert!(matches!(
            Pattern::parse("a/b"),
            Err(PatternError::NotAbsolute(_))
        ));
        assert!(matches!(
            Pattern::parse("/a//b"),
            Err(PatternError::BadSegment(_))
        ));
        assert!(matches!(
            Pattern::parse("/a/../b"),
            Err(PatternError::BadSegment(_))
        ));
        assert!(matches!(
            Pattern::parse("/**/a"),
            Err(PatternError::RestNotLast(_))
        ));
        assert!(matches!(
            Pattern::parse("/v*"),
            Err(PatternError::MixedSegment { .. })
        ));
        assert!(matches!(
            Pattern::parse("/{id}.json"),
            Err(PatternError::MixedSegment { .. })
        ));
        assert!(matches!(
            Pattern::parse("/{}"),
            Err(PatternError::MixedSegment { .. })
        ));
        assert!(matches!(
            Pattern::parse("/a/***"),
            Err(PatternError::MixedSegment { .. })
        ));
        assert_eq!(p("/chats/").segments(), p("/chats").segments());
        assert_eq!(p("/a/{id}").segments(), p("/a/*").segments());
        assert!(p("/").segments().is_empty());
        assert_eq!(p("/**").segments(), &[Segment::Rest]);
    }

    #[test]
    fn pattern_matching() {
        assert!(p("/a/*").matches("/a/x"));
        assert!(!p("/a/*").matches("/a"));
        assert!(!p("/a/*").matches("/a/x/y"));
        assert!(p("/a/**").matches("/a"));
        assert!(p("/a/**").matches("/a/x/y"));
        assert!(!p("/a/**").matches("/ab"));
        assert!(p("/**").matches("/"));
        assert!(p("/").matches("/"));
        assert!(!p("/").matches("/a"));
        assert!(!p("/A").matches("/a"), "case-sensitive");
    }

    /// The precedence table: for each path, the candidates in decreasing specificity.
    #[test]
    fn specificity_precedence_table() {
        let table: &[(&str, &[&str])] = &[
            ("/y", &["/y", "/y/**", "/*", "/**"]),
            (
                "/a/b",
                &["/a/b", "/a/*", "/a/**", "/*/b", "/*/*", "/*/**", "/**"],
            ),
            (
                "/environments/test/applications/x/revisions/3/deployments",
                &[
                    "/environments/test/applications/*/revisions/*/deployments",
                    "/environments/*/applications/*/revisions/*/deployments",
                    "/environments/**",
                    "/**",
                ],
            ),
            ("/", &["/", "/**"]),
        ];
        for (path, ranked) in table {
            for pair in ranked.windows(2) {
                let (hi, lo) = (p(pair[0]), p(pair[1]));
                assert!(hi.matches(path) && lo.matches(path), "{path}: {hi} / {lo}");
                assert!(
                    hi.specificity() > lo.specificity(),
                    "{path}: {hi} must beat {lo}"
                );
            }
            // The trie agrees, whatever the insertion order.
            for rotate in 0..ranked.len() {
                let mut m = Matcher::default();
                let mut order = ranked.to_vec();
                order.rotate_left(rotate);
                for pat in &order {
                    m.insert(&p(pat), || pat.to_string(), |_| Ok::<_, ()>(()))
                        .unwrap();
                }
                assert_eq!(
                    m.find(path, |_| true).map(String::as_str),
                    Some(ranked[0]),
                    "{path}"
                );
                // Refusing candidates walks down the ranking.
                for (skip, expected) in ranked.iter().enumerate() {
                    let mut seen = 0;
                    let got = m.find(path, |_| {
                        seen += 1;
                        seen > skip
                    });
                    assert_eq!(
                        got.map(String::as_str),
                        Some(*expected),
                        "{path} skip {skip}"
                    );
                }
            }
        }
        assert_eq!(p("/a/{id}").specificity(), p("/a/*").specificity());
    }

    #[test]
    fn equally_specific_patterns_share_a_value() {
        let mut m: Matcher<Vec<&str>> = Matcher::default();
        for pat in ["/a/{id}", "/a/*", "/a/{other}/"] {
            m.insert(
                &p(pat),
                || vec![pat],
                |v| {
                    v.push(pat);
                    Ok::<_, ()>(())
                },
            )
            .unwrap();
        }
        assert_eq!(m.values().len(), 1);
        assert_eq!(m.find("/a/x", |_| true).unwrap().len(), 3);
    }

    #[test]
    fn backtracks_from_a_literal_dead_end_to_a_wildcard() {
        let mut m = Matcher::default();
        for pat in ["/a/b/c", "/a/*/d"] {
            m.insert(&p(pat), || pat, |_| Ok::<_, ()>(())).unwrap();
        }
        assert_eq!(m.find("/a/b/d", |_| true), Some(&"/a/*/d"));
        assert_eq!(m.find("/a/b/c", |_| true), Some(&"/a/b/c"));
        assert_eq!(m.find("/a/b/e", |_| true), None);
        assert_eq!(m.find("/", |_| true), None);
    }

    /// Cross-check the trie against a brute-force maximum over `Specificity`.
    #[test]
    fn trie_agrees_with_brute_force() {
        let patterns = [
            "/", "/**", "/a", "/a/**", "/a/*", "/a/b", "/a/b/**", "/*/b", "/*/*/c", "/a/*/c",
            "/*/**", "/a/b/c", "/x/*/*", "/*",
        ];
        let paths = [
            "/", "/a", "/b", "/a/b", "/a/c", "/z/b", "/a/b/c", "/a/z/c", "/q/z/c", "/x/y/z",
            "/a/b/c/d", "/x",
        ];
        let mut m = Matcher::default();
        for pat in patterns {
            m.insert(&p(pat), || pat, |_| Ok::<_, ()>(())).unwrap();
        }
        for path in paths {
            let best = patterns
                .iter()
                .map(|s| p(s))
                .filter(|pat| pat.matches(path))
                .max_by_key(Pattern::specificity)
                .map(|pat| pat.as_str().to_owned());
            assert_eq!(
                m.find(path, |_| true).map(|s| s.to_string()),
                best,
                "{path}"
            );
        }
    }
}
