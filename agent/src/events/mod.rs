//! Ring-buffer records → typed events. Pure code: no aya, no I/O, testable on recorded bytes.
pub mod clock;
pub mod decode;

pub use decode::{DecodeError, Event, decode};
