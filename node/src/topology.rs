//! Where a node's cores listen: core `k` uses the node's configured peer and
//! client ports plus `k * CORE_PORT_STRIDE`, and talks to core `k` of the
//! other nodes; shard `s` lives on core `s % cores`.

use std::net::SocketAddr;

/// Core `k` listens on the configured peer and client ports plus
/// `k * CORE_PORT_STRIDE`, far enough apart that the ports of nodes placed on
/// neighbouring ports (as `node dev` does) never collide.
pub const CORE_PORT_STRIDE: u16 = 1000;

/// The address core `core` uses for `base`, or `None` past the last port.
pub fn core_addr(base: SocketAddr, core: u16) -> Option<SocketAddr> {
    let port = core.checked_mul(CORE_PORT_STRIDE).and_then(|offset| base.port().checked_add(offset))?;
    Some(SocketAddr::new(base.ip(), port))
}
