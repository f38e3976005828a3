//! l4relay: a layer-4 TCP relay daemon.
//!
//! MODULE MAP (rewritten below)

pub mod config;
pub mod daemon;
pub mod inbound;
pub mod lifecycle;
pub mod observe;
pub mod protocol;
pub mod relay;
pub mod tls;
pub mod upstream;

#[cfg(test)]
mod layers;
