//! HTTP/1.1 over a raw TCP socket: exact control over the bytes sent, the headers read and
//! the connection's state (keep-alive, `Connection: close`, the peer closing), which a full
//! client hides. The response head and chunk sizes are parsed by `httparse`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long [`http_get`] and [`connect`] wait for each step before calling it an error.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(15);

/// The most headers a response may have.
const MAX_HEADERS: usize = 64;

/// A parsed HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// True if the server said it will close the connection.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// Connects, sends `GET path`, reads one response. Any failure (refused, reset, timeout,
/// malformed) is an `Err` naming the step.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<RawResponse, String> {
    let mut stream = connect(addr).await?;
    send(
        &mut stream,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    )
    .await?;
    read_response(&mut stream, HTTP_TIMEOUT).await
}

/// Connects within [`HTTP_TIMEOUT`].
pub async fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    match tokio::time::timeout(HTTP_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Err(_) => Err("connect: timed out".into()),
    }
}

/// Writes `text` as it is (a request, or part of one).
pub async fn send(stream: &mut TcpStream, text: &str) -> Result<(), String> {
    stream
        .write_all(text.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))
}

/// Reads one response (head, then a `Content-Length` or chunked body; without either, the
/// body is what arrived with the head) within `timeout`. Bytes after it are dropped.
pub async fn read_response(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<RawResponse, String> {
    match tokio::time::timeout(timeout, read_response_inner(stream)).await {
        Ok(result) => result,
        Err(_) => Err(format!("read: no complete response within {timeout:?}")),
    }
}

async fn read_response_inner(stream: &mut TcpStream) -> Result<RawResponse, String> {
    let mut parser = ResponseParser::default();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("{}: {e}", parser.step()))?;
        if n == 0 {
            return Err(parser.closed_early());
        }
        if let Some(response) = parser.push(&chunk[..n])? {
            return Ok(response);
        }
    }
}

/// Waits up to `timeout` for the peer to close the connection (a read gives EOF or an
/// error); `Err` if it sent data instead or stayed open.
pub async fn wait_closed(stream: &mut TcpStream, timeout: Duration) -> Result<(), String> {
    let mut chunk = [0u8; 1024];
    match tokio::time::timeout(timeout, stream.read(&mut chunk)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Ok(()),
        Ok(Ok(n)) => Err(format!(
            "expected the connection to close, got {n} bytes: {:?}",
            String::from_utf8_lossy(&chunk[..n])
        )),
        Err(_) => Err(format!("the connection stayed open for {timeout:?}")),
    }
}

/// How the body after the head ends.
#[derive(Debug, Clone, Copy)]
enum Framing {
    Length(usize),
    Chunked,
    /// Neither: the body is what arrived with the head.
    Unframed,
}

/// The head of the response being read, and where its body starts in the buffer.
#[derive(Debug)]
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
    framing: Framing,
    body_start: usize,
}

/// One response, parsed from bytes as they arrive: [`push`](Self::push) what was read
/// until it returns the response.
#[derive(Debug, Default)]
pub struct ResponseParser {
    buf: Vec<u8>,
    head: Option<Head>,
    /// For a chunked body: where the next chunk-size line starts in `buf`, and the data of
    /// the chunks before it.
    next_chunk: usize,
    chunks: Vec<u8>,
}

impl ResponseParser {
    /// Adds bytes read from the connection: `Ok(Some(_))` once the response is complete,
    /// `Ok(None)` while more is needed, `Err` if the bytes are not an HTTP/1 response.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Option<RawResponse>, String> {
        self.buf.extend_from_slice(bytes);
        if self.head.is_none() {
            match parse_head(&self.buf)? {
                Some(head) => {
                    self.next_chunk = head.body_start;
                    self.head = Some(head);
                }
                None => return Ok(None),
            }
        }
        let Some(head) = &self.head else {
            return Ok(None);
        };
        let body = match head.framing {
            Framing::Length(len) => {
                let body = &self.buf[head.body_start..];
                (body.len() >= len).then(|| body[..len].to_vec())
            }
            Framing::Chunked => self.chunked()?,
            Framing::Unframed => Some(self.buf[head.body_start..].to_vec()),
        };
        Ok(body.map(|body| {
            let head = self.head.take().expect("the head was parsed");
            RawResponse {
                status: head.status,
                headers: head.headers,
                body,
            }
        }))
    }

    /// What was being read, for error messages.
    fn step(&self) -> &'static str {
        match self.head.as_ref().map(|h| h.framing) {
            None => "read",
            Some(Framing::Chunked) => "read chunk",
            Some(_) => "read body",
        }
    }

    /// The error when the peer closed the connection before the response was complete.
    pub fn closed_early(&self) -> String {
        match &self.head {
            None => format!(
                "read: connection closed after {} bytes, before a complete response head",
                self.buf.len()
            ),
            Some(Head {
                framing: Framing::Length(len),
                body_start,
                ..
            }) => format!(
                "read body: closed after {} of {len} bytes",
                self.buf.len() - body_start
            ),
            Some(_) => "read chunk: connection closed mid-body".into(),
        }
    }

    /// Decodes the chunks complete so far; the body once the last (empty) chunk is in.
    fn chunked(&mut self) -> Result<Option<Vec<u8>>, String> {
        loop {
            let at = self.next_chunk;
            let (line_len, size) = match httparse::parse_chunk_size(&self.buf[at..]) {
                Ok(httparse::Status::Complete(parsed)) => parsed,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::InvalidChunkSize) => {
                    return Err(format!(
                        "chunk size: invalid line {:?}",
                        String::from_utf8_lossy(&self.buf[at..])
                    ))
                }
            };
            let size = usize::try_from(size).map_err(|e| format!("chunk size: {e}"))?;
            let data = at + line_len;
            // The data, then CRLF (for the last chunk: no data, the CRLF ending the body).
            let Some(end) = self.buf.get(data..data + size + 2) else {
                return Ok(None);
            };
            if !end.ends_with(b"\r\n") {
                return Err(format!("chunk of {size} bytes not followed by CRLF"));
            }
            if size == 0 {
                return Ok(Some(std::mem::take(&mut self.chunks)));
            }
            self.chunks.extend_from_slice(&end[..size]);
            self.next_chunk = data + size + 2;
        }
    }
}

/// The head, if `buf` holds all of it.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let body_start = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(format!(
                "read: bad response head ({e}): {:?}",
                String::from_utf8_lossy(&buf[..buf.len().min(200)])
            ))
        }
    };
    let status = response.code.expect("a complete head has a status");
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|h| {
            let value = String::from_utf8_lossy(h.value).trim().to_string();
            (h.name.to_string(), value)
        })
        .collect();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let framing = if let Some(len) = find("content-length").and_then(|v| v.parse().ok()) {
        Framing::Length(len)
    } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        Framing::Chunked
    } else {
        Framing::Unframed
    };
    Ok(Some(Head {
        status,
        headers,
        framing,
        body_start,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` in pieces of `step` bytes; the response once complete.
    fn parse_in_steps(bytes: &[u8], step: usize) -> Result<Option<RawResponse>, String> {
        let mut parser = ResponseParser::default();
        for piece in bytes.chunks(step) {
            if let Some(response) = parser.push(piece)? {
                return Ok(Some(response));
            }
        }
        Ok(None)
    }

    #[test]
    fn a_content_length_body_ends_at_its_length_in_any_split() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhelloEXTRA";
        for step in 1..wire.len() {
            let response = parse_in_steps(wire, step).unwrap().expect("complete");
            assert_eq!(response.status, 200);
            assert_eq!(response.body_text(), "hello", "step {step}");
            assert!(response.closes());
            assert_eq!(response.header("content-LENGTH"), Some("5"));
        }
    }

    #[test]
    fn a_chunked_body_is_joined_in_any_split() {
        let wire = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n\
                     4\r\nWiki\r\n6;ext=1\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\n\r\n";
        for step in 1..wire.len() {
            let response = parse_in_steps(wire, step).unwrap().expect("complete");
            assert_eq!(response.status, 503);
            assert_eq!(response.body_text(), "Wikipedia in \r\n\r\nchunks.");
            assert!(!response.closes());
        }
    }

    #[test]
    fn an_incomplete_response_waits_and_says_what_is_missing() {
        let mut parser = ResponseParser::default();
        assert!(parser
            .push(b"HTTP/1.1 200 OK\r\nContent-Le")
            .unwrap()
            .is_none());
        assert!(parser
            .closed_early()
            .contains("before a complete response head"));
        assert!(parser.push(b"ngth: 10\r\n\r\nabc").unwrap().is_none());
        assert_eq!(
            parser.closed_early(),
            "read body: closed after 3 of 10 bytes"
        );
        let mut chunked = ResponseParser::default();
        let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nab";
        assert!(chunked.push(head).unwrap().is_none());
        assert_eq!(
            chunked.closed_early(),
            "read chunk: connection closed mid-body"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_wait() {
        assert!(parse_in_steps(b"SSH-2.0-OpenSSH\r\n\r\n", 64).is_err());
        let bad_chunk = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert!(parse_in_steps(bad_chunk, 64).is_err());
    }

    #[test]
    fn without_framing_the_body_is_what_came_with_the_head() {
        let response = parse_in_steps(b"HTTP/1.1 204 No Content\r\n\r\n", 64)
            .unwrap()
            .expect("complete");
        assert_eq!(response.status, 204);
        assert!(response.body.is_empty());
    }
}
