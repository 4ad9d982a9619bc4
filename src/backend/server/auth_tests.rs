//! Unit tests of token checking (`auth.rs`).

use super::*;
