//! A throwaway PostgreSQL database per test, on the server named by
//! `AUTHZ_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).
//! Tests fail loudly when the server is unreachable; they never skip.

use std::sync::atomic::{AtomicU32, Ordering};

use tokio_postgres::{Client, NoTls};

pub fn server_url() -> String {
    std::env::var("AUTHZ_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database created for one test, dropped by [`TestDb::drop_db`].
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// Creates a database and migrates it.
    pub async fn create(tag: &str) -> TestDb {
        let db = Self::create_bare(tag).await;
        authz::store::postgres::migrate(&db.url).await.unwrap();
        db
    }

    /// Creates an empty database (no schema).
    pub async fn create_bare(tag: &str) -> TestDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "authz_test_{}_{}_{}",
            tag.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let admin = admin().await;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .await
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let base = server_url();
        let url = match base.rfind('/') {
            Some(i) => format!("{}/{name}", &base[..i]),
            None => panic!("AUTHZ_TEST_DATABASE_URL `{base}` has no database part"),
        };
        TestDb { name, url }
    }

    pub async fn client(&self) -> Client {
        let (client, conn) = tokio_postgres::connect(&self.url, NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    }

    pub async fn revision(&self) -> u64 {
        let r: i64 = self
            .client()
            .await
            .query_one("SELECT revision FROM authz_state", &[])
            .await
            .unwrap()
            .get(0);
        r as u64
    }

    pub async fn drop_db(self) {
        let admin = admin().await;
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .unwrap();
    }
}

async fn admin() -> Client {
    let url = server_url();
    let (client, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is not reachable at `{url}` ({e}). Run scripts/test.sh (it starts one), \
             or set AUTHZ_TEST_DATABASE_URL to a server where this user may create databases."
        )
    });
    tokio::spawn(conn);
    client
}
