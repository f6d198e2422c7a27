//! This file exists to enable the library target, so that the agent can build-depend on this
//! crate; the programs themselves are the binary target (`src/main.rs`).
#![no_std]
