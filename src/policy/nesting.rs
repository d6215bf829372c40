//! How deep a document nests, found from its bytes before any parser sees it.
//!
//! serde_yaml_ng's work grows with the square of the nesting depth: a 195 KB file of
//! `- - - - ...` (100,000 levels) took 47 s to refuse. A policy nests about 8 levels
//! (`tenants`, a tenant, `roles`, a role, `routes`, a rule, `methods`), so a document
//! nested deeper than [`MAX_NESTING`] is refused by this scan, which reads each byte once
//! and holds at most [`MAX_NESTING`] indentation columns: linear in the document, however
//! it is written. serde_json stops at 128 levels by itself, also in linear time; JSON is
//! scanned the same way, so both formats have one limit and one message.
//!
//! What counts as a level (an upper bound on the collections a parser would open): on
//! each line, the enclosing block indentation columns (each deeper indentation is one
//! level), plus each `- ` or `? ` indicator opening the line's content, plus the flow
//! collections (`[`, `{`) open at that point. Quoted scalars (single or double, across
//! lines), comments and the content lines of block scalars (`|`, `>`) are skipped, so
//! brackets in text never count; a bracket inside a plain scalar in block context
//! (`path: /chats/{chat_id}`) does not open a collection and does not count either.

/// The deepest nesting a policy document may have (see the module documentation).
pub const MAX_NESTING: usize = 64;

/// Where a document first nests deeper than `max`: 1-based line and column.
pub fn too_deep(text: &str, max: usize) -> Option<(usize, usize)> {
    let mut scan = Scan {
        max,
        indents: Vec::new(),
        flow: 0,
        quote: None,
        block_scalar: None,
    };
    for (i, line) in text.split('\n').enumerate() {
        if let Some(column) = scan.line(line.strip_suffix('\r').unwrap_or(line).as_bytes()) {
            return Some((i + 1, column + 1));
        }
    }
    None
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    Single,
    Double,
}

struct Scan {
    max: usize,
    /// Indentation columns of the enclosing block collections, strictly increasing;
    /// never longer than `max + 1` (a longer one is refused when pushed).
    indents: Vec<usize>,
    /// Open flow collections.
    flow: usize,
    /// Inside a quoted scalar that continues on the next line.
    quote: Option<Quote>,
    /// Inside a block scalar's content: the indentation of the line that opened it
    /// (content lines are indented deeper).
    block_scalar: Option<usize>,
}

impl Scan {
    /// Scans one line (without its line break); the byte column where it nests too
    /// deep, if it does.
    fn line(&mut self, line: &[u8]) -> Option<usize> {
        let indent = line.iter().take_while(|&&b| b == b' ').count();
        let blank = line
            .get(indent..)
            .is_none_or(|rest| rest.iter().all(|&b| b == b' ' || b == b'\t'));
        if let Some(parent) = self.block_scalar {
            if blank || indent > parent {
                return None;
            }
            self.block_scalar = None;
        }
        let mut i = 0;
        let mut compact = 0;
        if self.quote.is_none() && self.flow == 0 {
            let first = line.get(indent).copied();
            if blank || first == Some(b'#') || line.starts_with(b"---") || line.starts_with(b"...")
            {
                return None;
            }
            // Block structure: leave every collection indented deeper than this line,
            // enter one if this line is indented deeper than the innermost.
            while self.indents.last().is_some_and(|&top| top > indent) {
                self.indents.pop();
            }
            if self.indents.last().is_none_or(|&top| top < indent) {
                self.indents.push(indent);
            }
            i = indent;
            // `- ` and `? ` open a collection each, as many as the line starts with.
            while let Some(&b) = line.get(i) {
                let next = line.get(i + 1).copied();
                if (b == b'-' || b == b'?') && matches!(next, None | Some(b' ' | b'\t')) {
                    compact += 1;
                    // Named at the indicator that goes too deep, not the line's end.
                    if self.depth(compact) > self.max {
                        return Some(i);
                    }
                    i += 1;
                    while matches!(line.get(i), Some(b' ' | b'\t')) {
                        i += 1;
                    }
                } else {
                    break;
                }
            }
            if self.depth(compact) > self.max {
                return Some(i);
            }
        }
        // A node may start here: flow collections and block scalars open only there in
        // block context (anywhere outside quotes in flow context).
        let mut node_start = true;
        let mut prev_space = true;
        while let Some(&b) = line.get(i) {
            if let Some(q) = self.quote {
                match (q, b) {
                    (Quote::Double, b'\\') => i += 1,
                    (Quote::Double, b'"') => self.quote = None,
                    (Quote::Single, b'\'') => {
                        if line.get(i + 1) == Some(&b'\'') {
                            i += 1;
                        } else {
                            self.quote = None;
                        }
                    }
                    _ => {}
                }
                i += 1;
                node_start = false;
                prev_space = false;
                continue;
            }
            match b {
                b'#' if prev_space => return None,
                b'"' | b'\'' if node_start || self.flow > 0 && prev_space => {
                    self.quote = Some(if b == b'"' {
                        Quote::Double
                    } else {
                        Quote::Single
                    });
                }
                b'[' | b'{' if node_start || self.flow > 0 => {
                    self.flow += 1;
                    if self.depth(compact) > self.max {
                        return Some(i);
                    }
                    node_start = true;
                    prev_space = true;
                    i += 1;
                    continue;
                }
                b']' | b'}' if self.flow > 0 => self.flow -= 1,
                b'|' | b'>' if node_start && self.flow == 0 => {
                    self.block_scalar = Some(indent);
                    return None;
                }
                b' ' | b'\t' => {
                    prev_space = true;
                    i += 1;
                    continue;
                }
                b':' | b',' | b'-' | b'?'
                    if matches!(line.get(i + 1), None | Some(b' ' | b'\t'))
                        || self.flow > 0 && b != b'-' && b != b'?' =>
                {
                    // A value or entry follows.
                    node_start = true;
                    prev_space = true;
                    i += 1;
                    continue;
                }
                _ => {}
            }
            node_start = false;
            prev_space = false;
            i += 1;
        }
        None
    }

    fn depth(&self, compact: usize) -> usize {
        self.indents.len() + compact + self.flow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_ok(text: &str, max: usize) -> bool {
        too_deep(text, max).is_none()
    }

    #[test]
    fn policies_nest_shallowly() {
        for p in ["console.yaml", "chat-api.yaml", "gateway.yaml"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples/policies")
                .join(p);
            let text = std::fs::read_to_string(path).unwrap();
            assert!(depth_ok(&text, 10), "{p}");
        }
        let json =
            r#"{"version":1,"roles":[{"id":"r","routes":[{"methods":["GET"],"path":"/a/{b}"}]}]}"#;
        // The document's own level, then roles, a role, routes, a rule, methods.
        assert!(depth_ok(json, 7));
        assert!(!depth_ok(json, 6));
    }

    #[test]
    fn every_way_of_nesting_counts() {
        let n = 70;
        let flow = format!("a: {}{}", "[".repeat(n), "]".repeat(n));
        let dashes = format!("{}x\n", "- ".repeat(n));
        let blocks: String = (0..n).map(|i| format!("{}k:\n", " ".repeat(i))).collect();
        let keys = format!("{}x\n", "? ".repeat(n));
        let json = format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n));
        let multi_line: String = (0..n).map(|_| "[\n").collect();
        for (what, text) in [
            ("flow", &flow),
            ("dashes", &dashes),
            ("indentation", &blocks),
            ("keys", &keys),
            ("json", &json),
            ("flow over lines", &multi_line),
        ] {
            let (line, _) = too_deep(text, MAX_NESTING).unwrap_or_else(|| panic!("{what}"));
            assert!(line >= 1, "{what}");
            assert!(
                depth_ok(text, 2 * n + 2),
                "{what} is counted at most once per level"
            );
        }
        assert_eq!(
            too_deep(&blocks, MAX_NESTING),
            Some((MAX_NESTING + 1, MAX_NESTING + 1))
        );
    }

    #[test]
    fn text_never_counts() {
        let n = 200;
        let brackets = "[{".repeat(n);
        for text in [
            format!("a: \"{brackets}\"\n"),
            format!("a: '{brackets}'\n"),
            format!("a: \"x\\\"{brackets}\"\n"),
            format!("a: 'it''s {brackets}'\n"),
            format!("a: \"line one\n  {brackets}\"\n"),
            format!("a: x # {brackets}\n"),
            format!("a: |\n  {brackets}\n  - - - - -\nb: 1\n"),
            format!("path: /a/{brackets}\n"),
            format!("- {{a: \"{brackets}\"}}\n"),
        ] {
            assert!(depth_ok(&text, 4), "{text}");
        }
        // Closing brackets outside a collection do not underflow the count.
        assert!(depth_ok("a: x]]}}\nb: [[c]]\n", 4));
    }
}
