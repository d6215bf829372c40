//! authz: role-based authorization decisions with reasons, answered from memory.
#![forbid(unsafe_code)]

pub mod pb;
pub mod policy;
