//! A minimal HTTP/1.1 client for the stand-in: one keep-alive connection per
//! task, reconnected after an error.

use std::net::SocketAddr;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;

/// One task's connection to the stand-in.
pub struct StandinClient {
    addr: SocketAddr,
    label: String,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl StandinClient {
    /// A client for the stand-in at `addr`, labelling its calls `label`.
    pub fn new(addr: SocketAddr, label: &str) -> Self {
        StandinClient {
            addr,
            label: label.to_string(),
            conn: None,
        }
    }

    async fn connect(&mut self) -> anyhow::Result<&mut SendRequest<Full<Bytes>>> {
        if self.conn.as_ref().is_none_or(|c| c.is_closed()) {
            let stream = tokio::net::TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("connecting to the stand-in at {}", self.addr))?;
            stream.set_nodelay(true)?;
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.conn = Some(send);
        }
        self.conn.as_mut().context("stand-in connection vanished")
    }

    /// Opens the connection now (errors are left for the first call).
    pub async fn warm(&mut self) {
        let _ = self.connect().await;
    }

    /// Sends one call of `tokens`, asked at `asked` (Unix seconds); returns the
    /// HTTP status.
    pub async fn call(&mut self, tokens: u64, asked: f64) -> anyhow::Result<u16> {
        for attempt in 0..2 {
            let req = Request::post("/v1/call")
                .header("host", "standin")
                .header("x-tokens", tokens.to_string())
                .header("x-asked", format!("{asked:.6}"))
                .header("x-client", self.label.as_str())
                .body(Full::new(Bytes::new()))?;
            let sent = match self.connect().await {
                Ok(conn) => conn.send_request(req).await,
                Err(e) if attempt == 0 => {
                    self.conn = None;
                    let _ = e;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match sent {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let _ = resp.into_body().collect().await;
                    return Ok(status);
                }
                Err(e) => {
                    self.conn = None;
                    if attempt == 1 {
                        return Err(e.into());
                    }
                }
            }
        }
        anyhow::bail!("stand-in call failed twice")
    }
}
