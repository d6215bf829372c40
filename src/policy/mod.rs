//! Policies: the document as written ([`source`]), compiled into immutable snapshots.

pub mod source;
