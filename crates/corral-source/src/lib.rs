//! Purges from the source of truth (issue #25): a committed row change becomes a purge.
//!
//! [`rules`] maps a changed row (old and new values) to the tags and URLs it invalidates;
//! [`pgoutput`] decodes PostgreSQL's logical-replication messages; [`transaction`] folds them
//! into what each committed transaction purges and the position to advance to once that is
//! acknowledged; [`pg`] connects to PostgreSQL and follows a replication slot; [`mariadb`]
//! decodes MariaDB's binlog and follows it from a stored GTID position; [`progress`] is what
//! either follower shares with its applier, and `follower` the loops both run (reconnect with
//! backoff, the reader task, the session's event loop); [`tls`] is the verified TLS session both can
//! switch to. Leadership and the purges themselves are the
//! binary's (`crates/corral/src/sources.rs`).

mod follower;
pub mod mariadb;
pub mod pg;
pub mod pgoutput;
pub mod progress;
pub mod rules;
pub mod tls;
pub mod transaction;
