//! Policies: the document as written ([`source`]), compiled ([`mod@compile`]) into immutable
//! per-tenant snapshots ([`snapshot`]) that the evaluator ([`eval`]) reads to make
//! [`decision::Decision`]s, and listings of what a subject may do ([`list`]). A document
//! is scanned for its nesting depth ([`nesting`]) before it is parsed.

pub mod compile;
pub mod decision;
pub mod diff;
pub mod eval;
pub mod expect;
pub mod list;
pub mod lookup;
pub mod nesting;
pub mod pattern;
pub mod snapshot;
pub mod source;
#[cfg(test)]
mod tests;
pub mod update;

pub use compile::{CompileError, Limits, Policy, compile, compile_with};
pub use decision::{Decision, Explanation, Reason};
pub use eval::{Action, Query};
pub use snapshot::TenantSnapshot;
pub use source::PolicyDocument;
