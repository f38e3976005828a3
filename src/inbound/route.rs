//! Where a connection goes when the listener's SNI routes have no pool for it.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteFallback {
    /// The listener's `pool`.
    Pool,
    Refuse,
}
