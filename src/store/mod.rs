//! Where the policy comes from: a policy file ([`file`]), loaded at start and reloaded
//! when it changes, or PostgreSQL ([`postgres`]), loaded at start and followed through
//! its change log.

pub mod admin;
pub mod file;
pub mod follow;
pub mod pgtls;
pub mod postgres;
pub mod sync;
