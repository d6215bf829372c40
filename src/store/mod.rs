//! Where the policy comes from. Today: a policy file ([`file`]), loaded at start and
//! reloaded when it changes.

pub mod file;
