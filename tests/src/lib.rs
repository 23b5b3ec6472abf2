//! HEXray's test kit: what the tests of several crates share, written once. Each crate's tests
//! live beside it (`engine/tests/`, `evaluator/tests/`, …) and take their fixtures from here;
//! the tests that span crates live in this crate's own `tests/`.
//!
//! - [`fixtures`]: the reference model, committed sample images, deterministic keys;
//! - [`database`]: fresh databases on the test PostgreSQL that `scripts/test.sh` starts;
//! - [`lost_reply`]: a proxy to that database that loses the reply to one COMMIT;
//! - [`node`]: real `hexray serve` processes, started and waited for;
//! - [`misbehaving`]: clients that misbehave on purpose (a stalled upload).

pub mod database;
pub mod fixtures;
pub mod lost_reply;
pub mod misbehaving;
pub mod node;
