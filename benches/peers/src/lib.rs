//! Nothing but the benches (benches/peers.rs): see Cargo.toml.
