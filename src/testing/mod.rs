//! Test support, shared by op25b's own unit and integration tests, its benches
//! and anyone testing a rule of their own: a [`PolicyBuilder`] (the lab config
//! with typed edits, no text surgery), packet constructors ([`packets`]), and
//! a clocked router harness ([`TestRouter`]), which the fuzz targets drive
//! as the data plane would ([`TestRouter::data_plane`]).
//!
//! Everything here panics with a message on misuse: it is for tests.

mod builder;
mod harness;
pub mod packets;

pub use builder::{list, PolicyBuilder};
pub use harness::{Left, Setup, TestRouter};

/// The lab's addresses, by role: the lab's own definition ([`crate::lab::def`]).
pub mod lab {
    pub use crate::lab::def::{DYN4, DYN6, MX4, MX6, RELAY4, RELAY6, ROUTER4, ROUTER6, STATIC4, STATIC6};
}
