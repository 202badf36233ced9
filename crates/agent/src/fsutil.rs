//! The agent's state files are written through the one shared atomic-write helper (`hearth-fsutil`): a crash
//! or power cut never leaves a half-written key, certificate or configuration behind.

pub use hearth_fsutil::write_atomic;
