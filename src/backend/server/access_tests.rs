//! Unit tests of the access rules (`access.rs`).

use super::*;
