//! When a request reached the stand-in: the kernel's receive timestamp of its
//! first bytes (`SO_TIMESTAMPNS`), not the moment the stand-in's thread got
//! round to reading them.
//!
//! A provider's bucket runs on the provider's clock, at the requests'
//! arrival. The stand-in runs on the same machine as the load; on a busy
//! machine its one thread may wait several milliseconds for a core when a
//! burst comes (every worker wakes at the start of a run at once). Stamped
//! by that thread, the first calls of a run look late while the stand-in's
//! bucket is still full, the refill it misses then is never made up while
//! the limiter keeps the bucket saturated, and a later call sent exactly on
//! its slot looks early by the stall. The kernel stamps each segment as it
//! is queued on the socket, whoever runs.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// A connection that remembers when the bytes not yet handed to a request
/// arrived.
pub struct Stamped {
    stream: TcpStream,
    first: Arc<AtomicU64>,
    /// Whether the kernel stamps this socket's segments.
    stamped: bool,
}

/// The other end of [`Stamped`]: takes the arrival of the request just read.
#[derive(Clone)]
pub struct Arrivals(Arc<AtomicU64>);

impl Arrivals {
    /// Unix seconds at which the first bytes read since the last call
    /// arrived, if the kernel stamped them.
    pub fn take(&self) -> Option<f64> {
        match self.0.swap(0, Ordering::AcqRel) {
            0 => None,
            ns => Some(ns as f64 / 1e9),
        }
    }
}

impl Stamped {
    /// Asks the kernel to stamp what `stream` receives. Where it cannot,
    /// [`Arrivals::take`] answers `None` (callers then read their own clock).
    pub fn new(stream: TcpStream) -> (Stamped, Arrivals) {
        let on: libc::c_int = 1;
        // SAFETY: setsockopt reads one c_int from a valid pointer on a socket
        // this stream owns.
        let rc = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        let first = Arc::new(AtomicU64::new(0));
        let s = Stamped {
            stream,
            first: first.clone(),
            stamped: rc == 0,
        };
        (s, Arrivals(first))
    }
}

/// One `recvmsg` into `buf`: bytes read and the kernel's timestamp of them
/// in Unix nanoseconds (0 if none came with them).
fn recv_stamped(fd: libc::c_int, buf: &mut [u8]) -> io::Result<(usize, u64)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one timespec control message, aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: a zeroed msghdr is valid; every pointer set below outlives the
    // call, and the lengths are those of the buffers they point to.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: as above.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = 0;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled,
    // within msg_controllen; a SCM_TIMESTAMPNS message holds one timespec.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                stamp = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, stamp))
}

impl AsyncRead for Stamped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.stamped {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        loop {
            ready!(this.stream.poll_read_ready(cx))?;
            let fd = this.stream.as_raw_fd();
            let unfilled = buf.initialize_unfilled();
            match this
                .stream
                .try_io(Interest::READABLE, || recv_stamped(fd, unfilled))
            {
                Ok((n, stamp)) => {
                    buf.advance(n);
                    if n > 0 && stamp > 0 {
                        // The earliest bytes not yet taken stand for the request.
                        let _ = this.first.compare_exchange(
                            0,
                            stamp,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        );
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Stamped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Bytes read 100 ms after they were sent carry the time they were sent.
    #[tokio::test]
    async fn bytes_read_late_carry_their_arrival_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (mut server, arrivals) = Stamped::new(server);
        // The kernel turns receive timestamps on a moment after the first
        // socket in the system asks for them (a deferred switch): bytes that
        // arrive before then carry none. Wait for that, 2 s at most.
        let mut buf = [0u8; 64];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            client.write_all(b"x").await.unwrap();
            assert_eq!(server.read(&mut buf).await.unwrap(), 1);
            if arrivals.take().is_some() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the kernel stamped no bytes within 2 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let sent = crate::now_unix();
        client.write_all(b"POST /v1/call").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"POST /v1/call");
        let at = arrivals.take().expect("the kernel stamped the bytes");
        assert!(
            (at - sent).abs() < 0.02,
            "stamped {:.1} ms after sending, read 100 ms after",
            (at - sent) * 1000.0
        );
        assert_eq!(arrivals.take(), None, "taken once");
    }
}
