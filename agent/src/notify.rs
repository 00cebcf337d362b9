//! sd_notify: telling systemd (a `Type=notify` unit) that berthd is ready
//! or stopping, without libsystemd.
//!
//! The protocol (sd_notify(3)): one datagram of `KEY=VALUE` lines to the
//! unix socket named by `$NOTIFY_SOCKET`, a path or, with a leading `@`,
//! an abstract name. Without the variable (not run by systemd) nothing is
//! sent. berthd sends `READY=1` once the CRI socket is bound and recovery
//! has run, and `STOPPING=1` when shutdown begins.

use std::io;
use std::os::unix::net::UnixDatagram;

/// The variable systemd sets for a `Type=notify` service.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Sends `state` to `$NOTIFY_SOCKET`; `Ok(false)` when it is unset.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os(NOTIFY_SOCKET_ENV) {
        Some(socket) if !socket.is_empty() => {
            notify_to(&socket.to_string_lossy(), state).map(|()| true)
        }
        _ => Ok(false),
    }
}

/// Sends `state` as one datagram to `socket` (a path, or `@name` for an
/// abstract socket).
pub fn notify_to(socket: &str, state: &str) -> io::Result<()> {
    let sender = UnixDatagram::unbound()?;
    let sent = match socket.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            sender.send_to_addr(state.as_bytes(), &address)?
        }
        None => sender.send_to(state.as_bytes(), socket)?,
    };
    if sent != state.len() {
        return Err(io::Error::other("short datagram to the notify socket"));
    }
    Ok(())
}

/// Sends `state`, logging a failure: systemd's bookkeeping must never stop
/// berthd.
pub fn tell_systemd(state: &str) {
    match notify(state) {
        Ok(true) => tracing::debug!(state, "notified systemd"),
        Ok(false) => {}
        Err(e) => tracing::warn!(state, error = %e, "cannot notify systemd"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_reaches_a_path_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let receiver = UnixDatagram::bind(&path).expect("bind");
        notify_to(&path.to_string_lossy(), "READY=1\nSTATUS=serving").expect("notify");
        let mut buffer = [0u8; 64];
        let n = receiver.recv(&mut buffer).expect("recv");
        assert_eq!(&buffer[..n], b"READY=1\nSTATUS=serving");
    }

    #[test]
    fn a_datagram_reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("berth-notify-test-{}", std::process::id());
        let address =
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
        let receiver = UnixDatagram::bind_addr(&address).expect("bind");
        notify_to(&format!("@{name}"), "STOPPING=1").expect("notify");
        let mut buffer = [0u8; 64];
        let n = receiver.recv(&mut buffer).expect("recv");
        assert_eq!(&buffer[..n], b"STOPPING=1");
    }

    #[test]
    fn nobody_listening_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(notify_to(&dir.path().join("none").to_string_lossy(), "READY=1").is_err());
    }
}
