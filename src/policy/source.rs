//! The policy document as written: YAML or JSON, deserialized with serde.
//!
//! This module owns the document's shape and its parsing, nothing more: ids, patterns and
//! references are checked by [`super::compile()`]. Unknown fields are errors, so a typo is
//! reported rather than silently ignored.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// A whole policy document. See `docs/policy-format.md`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    /// Format version; must be 1.
    pub version: u32,
    /// Built-in roles: declared once, exist in every tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<RoleDoc>,
    /// Endpoint entries shared by all tenants.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointDoc>,
    /// The tenants.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<TenantDoc>,
}

/// A role: built-in (top level) or custom (in a tenant).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleDoc {
    /// Role id.
    pub id: String,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Roles whose grants this role also gives, transitively.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub includes: Vec<String>,
    /// Named permissions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<String>,
    /// Route rules, judged per role: the most specific matching rule decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteDoc>,
}

/// A role's route rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDoc {
    /// HTTP methods, or `*`.
    pub methods: Vec<String>,
    /// Path pattern.
    pub path: String,
}

/// An endpoint-table entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointDoc {
    /// Path pattern.
    pub path: String,
    /// HTTP methods, or `*`.
    pub methods: Vec<String>,
    /// Roles that may call it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Anyone in an existing tenant may call it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub public: bool,
}

/// A tenant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantDoc {
    /// Tenant id.
    pub id: String,
    /// Custom roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<RoleDoc>,
    /// The tenant's own endpoint entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointDoc>,
    /// Roles every enabled member holds at the tenant root.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_roles: Vec<String>,
    /// Registered members.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<SubjectDoc>,
    /// Groups of members.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupDoc>,
    /// Role assignments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assignments: Vec<AssignmentDoc>,
}

/// A registered member.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectDoc {
    /// Subject id.
    pub id: String,
    /// A disabled subject holds nothing.
    #[serde(default, skip_serializing_if = "is_false")]
    pub disabled: bool,
}

/// A group of members.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupDoc {
    /// Group id.
    pub id: String,
    /// Member subject ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
}

/// A role assignment to a subject or a group, at a scope.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignmentDoc {
    /// The subject (exactly one of `subject` and `group`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The group (exactly one of `subject` and `group`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The role.
    pub role: String,
    /// The scope; empty is the tenant root.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Why a document could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file could not be read.
    #[error("{file}: {source}")]
    Io {
        /// The file.
        file: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is larger than the limit (`--max-policy-bytes`).
    #[error("{file}: {bytes} bytes is more than the limit max_policy_bytes = {limit}")]
    TooLarge {
        /// The file.
        file: String,
        /// Its size.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// The text is not a valid document; line and column are 1-based when known.
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        /// The file.
        file: String,
        /// Line, 1-based (0 if unknown).
        line: usize,
        /// Column, 1-based (0 if unknown).
        column: usize,
        /// What is wrong.
        message: String,
    },
}

/// Document formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// YAML.
    Yaml,
    /// JSON.
    Json,
}

impl Format {
    /// The format a file name implies: `.json` is JSON, anything else YAML (a superset).
    pub fn from_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("json") => Format::Json,
            _ => Format::Yaml,
        }
    }
}

impl PolicyDocument {
    /// Reads and parses a document from a file of at most the default
    /// [`super::Limits::document_bytes`] (64 MiB).
    pub fn read(path: &Path) -> Result<Self, SourceError> {
        Self::read_limited(path, super::Limits::default().document_bytes)
    }

    /// Reads and parses a document from a file of at most `limit` bytes: a larger file
    /// is refused ([`SourceError::TooLarge`]) after a `stat`, before it is read, and a
    /// file growing while it is read is cut off at `limit + 1` bytes and refused too.
    pub fn read_limited(path: &Path, limit: u64) -> Result<Self, SourceError> {
        use std::io::Read;
        let file = path.display().to_string();
        let io = |source| SourceError::Io {
            file: file.clone(),
            source,
        };
        let too_large = |bytes: u64| SourceError::TooLarge {
            file: file.clone(),
            bytes,
            limit,
        };
        let f = std::fs::File::open(path).map_err(io)?;
        let bytes = f.metadata().map_err(io)?.len();
        if bytes > limit {
            return Err(too_large(bytes));
        }
        let mut text = String::new();
        f.take(limit.saturating_add(1))
            .read_to_string(&mut text)
            .map_err(io)?;
        if text.len() as u64 > limit {
            return Err(too_large(text.len() as u64));
        }
        Self::parse_limited(&text, Format::from_path(path), &file, limit)
    }

    /// Parses a document; `file` names it in errors. A document nested deeper than
    /// [`super::nesting::MAX_NESTING`] is refused before it is parsed (parsing it would
    /// cost the square of its depth), and so is a YAML document whose aliases expand it
    /// beyond [`super::Limits::document_bytes`] (64 MiB): [`PolicyDocument::parse_limited`].
    pub fn parse(text: &str, format: Format, file: &str) -> Result<Self, SourceError> {
        Self::parse_limited(text, format, file, super::Limits::default().document_bytes)
    }

    /// [`PolicyDocument::parse`], with `limit` (bytes, `--max-policy-bytes`) bounding the
    /// YAML document with its aliases expanded: each alias (`*name`) stands for a copy
    /// of its anchored node, so a small document can stand for an unbounded one (one
    /// 1 MB string repeated through 20,000 aliases is 20 GB). The expanded size is
    /// measured first, without building anything (scalars count their bytes, every
    /// other node 1), and a document over `limit`, or over [`EXPANSION_FACTOR`] times
    /// its own size plus 1 MiB, is a syntax error naming the bound.
    pub fn parse_limited(
        text: &str,
        format: Format,
        file: &str,
        limit: u64,
    ) -> Result<Self, SourceError> {
        if let Some((line, column)) = super::nesting::too_deep(text, super::nesting::MAX_NESTING) {
            return Err(SourceError::Syntax {
                file: file.to_owned(),
                line,
                column,
                message: format!(
                    "nested deeper than {} levels (collections inside collections); refused before parsing",
                    super::nesting::MAX_NESTING
                ),
            });
        }
        let doc: PolicyDocument = match format {
            Format::Json => serde_json::from_str(text).map_err(|e| SourceError::Syntax {
                file: file.to_owned(),
                line: e.line(),
                column: e.column(),
                message: strip_location(&e.to_string()),
            })?,
            Format::Yaml => {
                let syntax = |e: serde_yaml_ng::Error| {
                    let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
                    SourceError::Syntax {
                        file: file.to_owned(),
                        line,
                        column,
                        message: strip_location(&e.to_string()),
                    }
                };
                yaml_limited(text, limit).map_err(syntax)?
            }
        };
        if doc.version != 1 {
            return Err(SourceError::Syntax {
                file: file.to_owned(),
                line: 0,
                column: 0,
                message: format!("unsupported `version: {}` (expected 1)", doc.version),
            });
        }
        Ok(doc)
    }

    /// Renders the document as YAML.
    pub fn to_yaml(&self) -> Result<String, serde_yaml_ng::Error> {
        serde_yaml_ng::to_string(self)
    }
}

/// How many times its written size a YAML document may grow by expanding its aliases
/// (plus [`EXPANSION_SLACK`] bytes), below the size limit itself: sharing a list among
/// many roles stays well within it, and refusing a document that expands more costs a
/// measuring walk in proportion to its written size, not to the limit.
pub const EXPANSION_FACTOR: u64 = 16;

/// Bytes a YAML document may grow by expanding aliases besides [`EXPANSION_FACTOR`]
/// times its size (1 MiB).
pub const EXPANSION_SLACK: u64 = 1024 * 1024;

/// Deserializes YAML text whose aliases expand it to at most `limit` bytes, and at most
/// [`EXPANSION_FACTOR`] times its own size plus [`EXPANSION_SLACK`]: measured by a walk
/// over the parser's events before anything is built (scalars count their bytes, every
/// other node 1), which stops at the bound. Policy documents and expectation files
/// (`authzd test`) are read through it.
pub(crate) fn yaml_limited<T: serde::de::DeserializeOwned>(
    text: &str,
    limit: u64,
) -> Result<T, serde_yaml_ng::Error> {
    // An alias needs an anchor (`&name`): without a `&` anywhere, nothing can expand
    // and the measuring walk is skipped.
    if text.contains('&') {
        let bound = limit.min(
            (text.len() as u64)
                .saturating_mul(EXPANSION_FACTOR)
                .saturating_add(EXPANSION_SLACK),
        );
        let used = std::cell::Cell::new(0);
        serde::de::DeserializeSeed::deserialize(
            Expanded {
                used: &used,
                limit: bound,
            },
            serde_yaml_ng::Deserializer::from_str(text),
        )?;
    }
    serde_yaml_ng::from_str(text)
}

/// Measures a document's size with its aliases expanded, without building it: the
/// bytes of its scalars plus one per other node, failing as soon as that passes `limit`
/// (so the walk itself costs at most `limit`).
#[derive(Clone, Copy)]
struct Expanded<'a> {
    used: &'a std::cell::Cell<u64>,
    limit: u64,
}

impl Expanded<'_> {
    fn add<E: serde::de::Error>(self, n: usize) -> Result<(), E> {
        let used = self.used.get().saturating_add(n as u64);
        self.used.set(used);
        if used > self.limit {
            return Err(E::custom(format!(
                "with its aliases expanded the document is more than {} bytes (at most max_policy_bytes, and at most {EXPANSION_FACTOR} times its own size plus 1 MiB); refused before it is built",
                self.limit
            )));
        }
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Expanded<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Expanded<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a YAML document")
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.add(1)
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.add(1)
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.add(1)
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.add(1)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.add(v.len().saturating_add(1))
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<(), E> {
        self.add(v.len().saturating_add(1))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.add(1)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        self.add(1)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }

    fn visit_newtype_struct<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.add(1)?;
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.add(1)?;
        while map.next_key_seed(self)?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }

    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        // A tagged node (`!tag value`): the policy format has none.
        let _ = data;
        Err(serde::de::Error::custom(
            "YAML tags (`!tag`) are not part of the policy format",
        ))
    }
}

/// serde's messages end in " at line L column C"; the error carries those separately.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg.get(..i).unwrap_or(msg).to_owned(),
        None => msg.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_are_held_to_the_size_limit_expanded() {
        // One anchored 1,000-byte description repeated through 100 aliases: about
        // 100 kB expanded from a 1.5 kB document.
        let big = "x".repeat(1000);
        let aliases = vec!["*d"; 100].join(", ");
        let text = format!(
            "version: 1\nroles:\n  - id: a\n    description: &d {big}\n  - id: b\n    permissions: [{aliases}]\n"
        );
        let err = PolicyDocument::parse_limited(&text, Format::Yaml, "bomb.yaml", 50_000)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("bomb.yaml:") && err.contains("with its aliases expanded"),
            "{err}"
        );
        // Under a limit it fits, the same document parses; anchors for sharing a list are
        // fine.
        assert!(PolicyDocument::parse_limited(&text, Format::Yaml, "bomb.yaml", 200_000).is_ok());
        let shared = "version: 1\nroles:\n  - id: a\n    routes: &r\n      - methods: [GET]\n        path: /x\n  - id: b\n    routes: *r\n";
        let doc = PolicyDocument::parse_limited(shared, Format::Yaml, "s.yaml", 1_000).unwrap();
        assert_eq!(doc.roles[1].routes, doc.roles[0].routes);
    }

    #[test]
    fn yaml_errors_carry_line_and_column() {
        let err = PolicyDocument::parse(
            "version: 1\ntenants:\n  - id: a\n    subjets: []\n",
            Format::Yaml,
            "p.yaml",
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("p.yaml:4:"), "{msg}");
        assert!(msg.contains("unknown field `subjets`"), "{msg}");
    }

    #[test]
    fn json_and_yaml_read_the_same_document() {
        let y = PolicyDocument::parse(
            "version: 1\nroles:\n  - id: r\n    permissions: [p]\n",
            Format::Yaml,
            "a",
        )
        .unwrap();
        let j = PolicyDocument::parse(
            r#"{"version":1,"roles":[{"id":"r","permissions":["p"]}]}"#,
            Format::Json,
            "b",
        )
        .unwrap();
        assert_eq!(y, j);
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing_naming_the_line() {
        // 100,000 levels: serde_yaml_ng would take most of a minute on this.
        let text = format!("version: 1\nroles:\n{}x\n", "- ".repeat(100_000));
        let err = PolicyDocument::parse(&text, Format::Yaml, "p.yaml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("p.yaml:3:"), "{msg}");
        assert!(msg.contains("nested deeper than 64 levels"), "{msg}");
        let json = format!(
            "{{\"version\": 1, \"roles\": {}{}}}",
            "[".repeat(1000),
            "]".repeat(1000)
        );
        let err = PolicyDocument::parse(&json, Format::Json, "p.json").unwrap_err();
        assert!(err.to_string().starts_with("p.json:1:"), "{err}");
        assert!(
            err.to_string().contains("nested deeper than 64 levels"),
            "{err}"
        );
    }

    #[test]
    fn version_must_be_one() {
        let err = PolicyDocument::parse("version: 2\n", Format::Yaml, "p.yaml").unwrap_err();
        assert!(
            err.to_string().contains("unsupported `version: 2`"),
            "{err}"
        );
    }
}
