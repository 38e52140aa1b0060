//! `nestdock probe --socket PATH`: exits 0 once a Docker API answers `_ping`
//! on a unix socket. The guard's startup probe: the guard forwards `_ping` to
//! the node's daemon, so the probe passes only when the whole path works,
//! and the targets start with a daemon that answers.
//!
//! Hand-written rather than through hyper's client: one HTTP/1.0 request
//! and its status line, blocking, with a timeout; the kubelet runs it every
//! second while the pod starts, so it should start and end in microseconds
//! and pull in no runtime. The image has no shell and no curl to do it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Most of a response read: the status line and Docker's `OK` fit easily.
const MAX_RESPONSE: u64 = 16 * 1024;

/// Asks `socket` for `GET /_ping`; `Ok` when the answer is 200.
pub fn ping(socket: &Path, timeout: Duration) -> Result<(), String> {
    let at = socket.display();
    let mut stream =
        UnixStream::connect(socket).map_err(|e| format!("cannot connect to {at}: {e}"))?;
    for set in [UnixStream::set_read_timeout, UnixStream::set_write_timeout] {
        set(&stream, Some(timeout)).map_err(|e| format!("{at}: {e}"))?;
    }
    stream
        .write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .map_err(|e| format!("cannot send to {at}: {e}"))?;
    let mut response = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut response)
        .map_err(|e| format!("no answer from {at}: {e}"))?;
    let status = response
        .split(|b| *b == b'\n')
        .next()
        .map(|l| String::from_utf8_lossy(l).trim().to_string())
        .unwrap_or_default();
    let code = status.split(' ').nth(1);
    if status.starts_with("HTTP/1.") && code == Some("200") {
        Ok(())
    } else if status.is_empty() {
        Err(format!("{at} closed the connection without an answer"))
    } else {
        Err(format!("{at} answered {status:?} to GET /_ping, not 200"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A one-shot server that answers `reply` to the first request.
    fn serve_once(reply: &'static [u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(reply);
            }
        });
        (dir, path)
    }

    #[test]
    fn passes_on_200_and_says_why_otherwise() {
        let t = Duration::from_secs(2);
        let (_d, ok) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK");
        assert_eq!(ping(&ok, t), Ok(()));
        let (_d, down) = serve_once(b"HTTP/1.1 502 Bad Gateway\r\n\r\nupstream down");
        let e = ping(&down, t).unwrap_err();
        assert!(e.contains("502"), "{e}");
        let (_d, silent) = serve_once(b"");
        assert!(ping(&silent, t).unwrap_err().contains("without an answer"));
        let e = ping(Path::new("/nonexistent/docker.sock"), t).unwrap_err();
        assert!(
            e.contains("cannot connect") && e.contains("/nonexistent/docker.sock"),
            "{e}"
        );
    }
}
