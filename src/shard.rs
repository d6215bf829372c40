//! Which tenants a replica serves: all of them (the default), a list (`--tenants`), or
//! one shard of a hash partition (`--tenant-shard i/n`).
//!
//! A tenant's shard is `fnv1a64(tenant id as UTF-8) mod n`: FNV-1a, 64 bits, offset
//! basis `0xcbf29ce484222325`, prime `0x100000001b3`. It is fixed by this definition (no
//! seed, not Rust's randomized hasher), so every replica, every release, and a router or
//! client in any language computes the same shard for a tenant ([`shard_of`]).
//!
//! No I/O here: the follower loads only the tenants [`TenantFilter::serves`] accepts, and
//! [`crate::cache::Cache::resolve`] refuses the others with
//! [`crate::cache::FreshnessError::NotServed`], naming the shard the tenant belongs to.

use std::{collections::BTreeSet, fmt, str::FromStr};

/// The tenants a replica serves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TenantFilter {
    /// Every tenant.
    #[default]
    All,
    /// Only these tenant ids.
    List(BTreeSet<String>),
    /// The tenants whose [`shard_of`] with `count` is `index`.
    Shard {
        /// This replica's shard, `0..count`.
        index: u32,
        /// How many shards the tenant space is split into.
        count: u32,
    },
}

/// The 64-bit FNV-1a hash of `bytes` (see the module documentation).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The shard, out of `count`, that `tenant` belongs to (`0` when `count` is 0 or 1).
pub fn shard_of(tenant: &str, count: u32) -> u32 {
    if count <= 1 {
        return 0;
    }
    // The remainder is below `count`, a u32.
    u32::try_from(fnv1a64(tenant.as_bytes()) % u64::from(count)).unwrap_or(0)
}

impl TenantFilter {
    /// Whether this replica serves `tenant`.
    #[inline]
    pub fn serves(&self, tenant: &str) -> bool {
        match self {
            TenantFilter::All => true,
            TenantFilter::List(ids) => ids.contains(tenant),
            TenantFilter::Shard { index, count } => shard_of(tenant, *count) == *index,
        }
    }

    /// Whether every tenant is served.
    pub fn is_all(&self) -> bool {
        matches!(self, TenantFilter::All)
    }

    /// Where `tenant` is served, for the message refusing it here: `shard i/n` for a
    /// sharded replica, else `another replica`.
    pub fn home_of(&self, tenant: &str) -> String {
        match self {
            TenantFilter::Shard { count, .. } => {
                format!("shard {}/{count}", shard_of(tenant, *count))
            }
            _ => "another replica".to_owned(),
        }
    }
}

impl fmt::Display for TenantFilter {
    /// `all tenants`, `shard 0/2`, or `3 listed tenants`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TenantFilter::All => f.write_str("all tenants"),
            TenantFilter::List(ids) if ids.len() == 1 => f.write_str("1 listed tenant"),
            TenantFilter::List(ids) => write!(f, "{} listed tenants", ids.len()),
            TenantFilter::Shard { index, count } => write!(f, "shard {index}/{count}"),
        }
    }
}

/// A `--tenant-shard` or `--tenants` value that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShardParseError {
    /// Not `i/n` with `0 <= i < n`, `n >= 1`.
    #[error("`{0}` is not a shard `i/n` with 0 <= i < n (e.g. `0/2`)")]
    Shard(String),
    /// A listed tenant id is invalid.
    #[error("tenant `{id}` in the list: {error}")]
    Tenant {
        /// The id as given.
        id: String,
        /// Why it is invalid.
        error: crate::model::InputError,
    },
    /// The list names no tenant.
    #[error("the tenant list is empty")]
    EmptyList,
}

impl TenantFilter {
    /// Parses `i/n` (`--tenant-shard`).
    pub fn parse_shard(s: &str) -> Result<TenantFilter, ShardParseError> {
        let bad = || ShardParseError::Shard(s.to_owned());
        let (i, n) = s.trim().split_once('/').ok_or_else(bad)?;
        let index = u32::from_str(i.trim()).map_err(|_| bad())?;
        let count = u32::from_str(n.trim()).map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(TenantFilter::Shard { index, count })
    }

    /// Parses a comma-separated list of tenant ids (`--tenants`).
    pub fn parse_list(s: &str) -> Result<TenantFilter, ShardParseError> {
        let mut ids = BTreeSet::new();
        for id in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            crate::model::tenant_id(id).map_err(|error| ShardParseError::Tenant {
                id: id.to_owned(),
                error,
            })?;
            ids.insert(id.to_owned());
        }
        if ids.is_empty() {
            return Err(ShardParseError::EmptyList);
        }
        Ok(TenantFilter::List(ids))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        // From the FNV reference test suite (draft-eastlake-fnv).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn shards_split_the_tenant_space() {
        let a = TenantFilter::parse_shard("0/2").unwrap();
        let b = TenantFilter::parse_shard("1/2").unwrap();
        let mut counts = [0u32; 2];
        for i in 0..1000 {
            let t = format!("tenant-{i}");
            assert!(a.serves(&t) != b.serves(&t), "{t} served exactly once");
            counts[shard_of(&t, 2) as usize] += 1;
        }
        // A hash, not a split by name: both halves get a fair share.
        assert!(counts.iter().all(|&c| c > 400), "{counts:?}");
        assert_eq!(a.home_of("a"), format!("shard {}/2", shard_of("a", 2)));
        assert!(TenantFilter::parse_shard("0/1").unwrap().serves("anything"));
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in ["", "1", "2/2", "0/0", "-1/2", "a/b", "1/2/3"] {
            assert!(TenantFilter::parse_shard(bad).is_err(), "{bad}");
        }
        assert_eq!(
            TenantFilter::parse_list(" , "),
            Err(ShardParseError::EmptyList)
        );
        assert!(TenantFilter::parse_list("a,b c").is_err());
        let l = TenantFilter::parse_list("acme, globex,acme").unwrap();
        assert!(l.serves("acme") && l.serves("globex") && !l.serves("initech"));
        assert_eq!(l.to_string(), "2 listed tenants");
    }
}
