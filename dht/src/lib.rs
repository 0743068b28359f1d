//! shoal's Mainline DHT node (BEP 5), sans-IO.
//!
//! Nothing here opens a socket or reads a clock: the caller feeds
//! datagrams and the current time in ([`Node::handle`], [`Node::tick`])
//! and sends what [`Node::poll_transmit`] returns. That is how the
//! client's engine runs one node for all its torrents on its UDP socket,
//! and how the tests run thousands of nodes in memory.

pub mod id;
pub mod krpc;
pub mod lookup;
pub mod node;
pub mod routing;
pub mod store;

pub use id::NodeId;
pub use node::{Announce, Config, Event, Family, LookupId, Node, Stats};
