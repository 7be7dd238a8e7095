//! Test support, shared by op25b's own unit and integration tests, its benches
//! and anyone testing a rule of their own: a [`PolicyBuilder`] (the lab config
//! with typed edits, no text surgery), packet constructors ([`packets`]), and
//! a clocked router harness ([`TestRouter`]).
//!
//! Everything here panics with a message on misuse: it is for tests.

mod builder;
mod harness;
pub mod packets;

pub use builder::{list, PolicyBuilder};
pub use harness::TestRouter;

/// The lab's addresses (config/lab.toml), by role.
pub mod lab {
    /// The router's IPv4 address.
    pub const ROUTER4: &str = "100.64.0.1";
    /// The router's IPv6 address.
    pub const ROUTER6: &str = "2001:db8:100::1";
    /// A subscriber in the dynamic pool.
    pub const DYN4: &str = "100.64.1.10";
    /// A subscriber in the dynamic pool, IPv6.
    pub const DYN6: &str = "2001:db8:100:1::10";
    /// A static (exempt) subscriber.
    pub const STATIC4: &str = "100.64.9.10";
    /// A static (exempt) subscriber, IPv6.
    pub const STATIC6: &str = "2001:db8:100:9::10";
    /// An outside mail server.
    pub const MX4: &str = "203.0.113.25";
    /// An outside mail server, IPv6.
    pub const MX6: &str = "2001:db8:203::25";
    /// The ISP's relay.
    pub const RELAY4: &str = "198.51.100.25";
    /// The ISP's relay, IPv6.
    pub const RELAY6: &str = "2001:db8:25::25";
}
