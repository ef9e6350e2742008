//! Purges from the source of truth (issue #25): a committed row change becomes a purge.
//!
//! No sockets here. [`rules`] maps a changed row (old and new values) to the tags and URLs it
//! invalidates; [`pgoutput`] decodes PostgreSQL's logical-replication messages; [`transaction`] folds them into what
//! each committed transaction purges and the position to advance to once that is acknowledged.
//! The follower that polls a slot and the wiring into the binary are not built yet.

pub mod pgoutput;
pub mod rules;
pub mod transaction;
