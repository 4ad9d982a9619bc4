//! Unit tests of the scoped pull (`pull.rs`).

use super::*;
