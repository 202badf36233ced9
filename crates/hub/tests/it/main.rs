//! The hub's integration tests: one binary, split by capability. Each test starts its own hub on
//! `127.0.0.1:0` in this process and talks to it over real TLS, as devices and operators would.

mod api;
mod bad_input;
mod conformance;
mod disclosure;
mod enrol;
mod hardening;
mod hostile;
mod interop;
mod mail;
mod people;
mod roles;
mod session;
mod store_contract;
mod updates;
