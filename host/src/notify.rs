//! Readiness for service managers: systemd's `Type=notify` protocol
//! (`READY=1` sent as a datagram to `$NOTIFY_SOCKET`), so that units ordered
//! after d4c's services start once they answer, not once they were forked.

use std::os::unix::net::UnixDatagram;

use anyhow::{Context, Result};

/// Tells the service manager, if one asked (`$NOTIFY_SOCKET` is set), that
/// the service is ready. A no-op otherwise.
pub fn ready() -> Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    // `@name` is a socket in the abstract namespace.
    let sent = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(b"READY=1\n", &addr)
        }
        None => socket.send_to(b"READY=1\n", &path),
    };
    sent.map(|_| ()).with_context(|| {
        format!(
            "notifying the service manager at {}",
            path.to_string_lossy()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one test in this crate that sets `NOTIFY_SOCKET`: both forms of
    /// address, one after the other.
    #[test]
    fn sends_ready_to_the_socket_systemd_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        std::env::set_var("NOTIFY_SOCKET", &path);
        ready().unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("d4c-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abstract_listener = UnixDatagram::bind_addr(&addr).unwrap();
        std::env::set_var("NOTIFY_SOCKET", format!("@{name}"));
        ready().unwrap();
        let n = abstract_listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
        std::env::remove_var("NOTIFY_SOCKET");
        ready().unwrap();
    }
}
