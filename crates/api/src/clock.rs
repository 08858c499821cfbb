//! The node's wall clock, as the API reads it: milliseconds since the Unix epoch. Every
//! handler and store takes the time from here (a clock before 1970 reads as 0).

use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
