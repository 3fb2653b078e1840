//! Reading a request body as OpenAI's API defines it: JSON only (415
//! otherwise), decoded when the client compressed it (`Content-Encoding:
//! gzip` or `deflate`; others get a 415 that names what is accepted), and
//! never larger than `server.max_body_bytes`, before or after decoding, and
//! in within `server.body_read_timeout_secs` (408 otherwise).

use std::io::Read;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use bytes::Bytes;

use super::Invalid;

/// Refuses a body that is not `application/json`.
pub(crate) fn check_media_type(headers: &HeaderMap) -> Result<(), Invalid> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        return Ok(());
    }
    let got = if ct.is_empty() {
        "no Content-Type".to_string()
    } else {
        format!("Content-Type {ct:?}")
    };
    Err(unsupported(
        "unsupported_media_type",
        format!("This endpoint takes a JSON body: send it with `Content-Type: application/json` (got {got})."),
    ))
}

fn unsupported(code: &'static str, message: String) -> Invalid {
    Invalid::new(code, "body", message).with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
}

fn too_large(limit: usize) -> Invalid {
    Invalid::new(
        "request_too_large",
        "body",
        format!("The request body is larger than this gateway accepts ({limit} bytes). Shorten the request."),
    )
    .with_status(StatusCode::PAYLOAD_TOO_LARGE)
}

/// The body's bytes, decoded, at most `limit` of them, read within
/// `timeout`.
pub(crate) async fn read(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, Invalid> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .unwrap_or_default();
    // Usually the whole body came with the headers: no timer then.
    let mut reading = std::pin::pin!(axum::body::to_bytes(body, limit));
    let read = match futures_util::FutureExt::now_or_never(&mut reading) {
        Some(read) => Ok(read),
        None => tokio::time::timeout(timeout, reading).await,
    };
    let bytes = match read {
        Ok(read) => read.map_err(|_| too_large(limit))?,
        Err(_) => {
            return Err(Invalid::new(
                "request_timeout",
                "body",
                format!(
                    "The request body did not arrive within {} s of its headers; send it whole, without pauses.",
                    timeout.as_secs_f64()
                ),
            )
            .with_status(StatusCode::REQUEST_TIMEOUT));
        }
    };
    match encoding.as_str() {
        "" | "identity" => Ok(bytes),
        "gzip" | "x-gzip" => decode(flate2::read::MultiGzDecoder::new(&bytes[..]), limit),
        "deflate" => decode(flate2::read::ZlibDecoder::new(&bytes[..]), limit),
        other => Err(unsupported(
            "unsupported_content_encoding",
            format!("Content-Encoding {other:?} is not supported: send the body uncompressed, or compressed with gzip or deflate."),
        )),
    }
}

/// Inflates at most `limit` bytes: a small body that expands past it is
/// refused like a large one (no decompression bomb gets through).
fn decode(reader: impl Read, limit: usize) -> Result<Bytes, Invalid> {
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            Invalid::new(
                "invalid_content_encoding",
                "body",
                format!("The compressed request body could not be decoded ({e}); check its Content-Encoding."),
            )
        })?;
    if out.len() > limit {
        return Err(too_large(limit));
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn decodes_gzip_and_refuses_bombs_and_unknown_encodings() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&vec![b' '; 10_000]).unwrap();
        let packed = gz.finish().unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        let t = std::time::Duration::from_secs(5);
        let got = read(&h, Body::from(packed.clone()), 20_000, t)
            .await
            .unwrap();
        assert_eq!(got.len(), 10_000);
        let bomb = read(&h, Body::from(packed), 5_000, t).await.unwrap_err();
        assert_eq!(bomb.status, StatusCode::PAYLOAD_TOO_LARGE);
        h.insert(header::CONTENT_ENCODING, "br".parse().unwrap());
        let e = read(&h, Body::from("x"), 100, t).await.unwrap_err();
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(e.message.contains("gzip"), "{}", e.message);
    }
}
