//! A minimal HTTP/1.1 client for etcd's JSON gateway (`POST /v3/...`): one request per
//! connection, every read and write bounded by a deadline, and the chunked stream of a watch.
//! Plain `http://` only (see docs/etcd.md for why no gRPC, no TLS).

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Instant;

/// One etcd member's client URL, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// Parses `http://host:port`, `host:port` or `host` (port 2379).
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        let t = s.trim();
        if t.starts_with("https://") || t.starts_with("unixs://") {
            return Err(format!(
                "{t:?}: TLS endpoints are not supported; give an http:// client URL (run the \
                 lock clients next to a plaintext listener, e.g. --listen-client-urls on \
                 loopback or a private network)"
            ));
        }
        let rest = t.strip_prefix("http://").unwrap_or(t);
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') || rest.contains("://") {
            return Err(format!(
                "{s:?} is not an etcd client URL; give http://HOST:PORT (e.g. http://127.0.0.1:2379)"
            ));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') && !p.is_empty() => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| format!("{s:?}: the port {p:?} is not a number 1-65535"))?;
                (
                    h.trim_start_matches('[').trim_end_matches(']').to_string(),
                    port,
                )
            }
            _ => (rest.to_string(), 2379),
        };
        if host.is_empty() || port == 0 {
            return Err(format!("{s:?}: give http://HOST:PORT"));
        }
        Ok(Endpoint { host, port })
    }

    fn connect(&self, deadline: Instant) -> io::Result<TcpStream> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for addr in (self.host.as_str(), self.port).to_socket_addrs()? {
            let left = remaining(deadline)?;
            match TcpStream::connect_timeout(&addr, left) {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    return Ok(s);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "http://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "http://{}:{}", self.host, self.port)
        }
    }
}

fn remaining(deadline: Instant) -> io::Result<std::time::Duration> {
    let now = Instant::now();
    if now >= deadline {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
    }
    Ok(deadline - now)
}

fn request_bytes(ep: &Endpoint, path: &str, body: &[u8], close: bool) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{}\r\n",
        ep.host,
        ep.port,
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// Reads from `s` until `deadline` (a timeout is an error here).
fn read_some(s: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> io::Result<usize> {
    s.set_read_timeout(Some(remaining(deadline)?))?;
    let mut chunk = [0u8; 16 * 1024];
    let n = match s.read(&mut chunk) {
        Ok(n) => n,
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock) => {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out"));
        }
        Err(e) => return Err(e),
    };
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn find(h: &[u8], needle: &[u8]) -> Option<usize> {
    h.windows(needle.len()).position(|w| w == needle)
}

/// The status code and whether the body is chunked, from a response head.
fn parse_head(head: &[u8]) -> io::Result<(u16, bool, Option<usize>)> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| bad("no HTTP status line"))?;
    let mut chunked = false;
    let mut len = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if k.eq_ignore_ascii_case("content-length") {
            len = v.parse().ok();
        }
    }
    Ok((status, chunked, len))
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Decodes as much of a chunked body as `raw` holds: appends to `out`, returns the bytes of
/// `raw` used and whether the last chunk was seen.
fn dechunk(raw: &[u8], out: &mut Vec<u8>) -> io::Result<(usize, bool)> {
    let mut at = 0;
    loop {
        let Some(eol) = find(&raw[at..], b"\r\n") else {
            return Ok((at, false));
        };
        let size_txt = String::from_utf8_lossy(&raw[at..at + eol]);
        let size_txt = size_txt.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_txt, 16).map_err(|_| bad("bad chunk size"))?;
        let start = at + eol + 2;
        if size == 0 {
            return Ok((raw.len(), true));
        }
        if raw.len() < start + size + 2 {
            return Ok((at, false));
        }
        out.extend_from_slice(&raw[start..start + size]);
        at = start + size + 2;
    }
}

/// Idle kept-alive connections, by endpoint index.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    idle: std::sync::Mutex<Vec<(usize, TcpStream)>>,
}

/// At most this many idle connections are kept.
const POOL_MAX: usize = 8;

impl Pool {
    fn take(&self, i: usize) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap();
        let at = idle.iter().rposition(|(k, _)| *k == i)?;
        Some(idle.swap_remove(at).1)
    }

    fn give(&self, i: usize, s: TcpStream) {
        let mut idle = self.idle.lock().unwrap();
        if idle.len() < POOL_MAX {
            idle.push((i, s));
        }
    }
}

/// One unary call: `POST path` with a JSON body; the status and the body, all before
/// `deadline`. Reuses an idle connection to the same member when there is one (every call is
/// idempotent, so one that fails on a connection the server had closed is sent again on a
/// new one).
pub(crate) fn post(
    pool: &Pool,
    i: usize,
    ep: &Endpoint,
    path: &str,
    body: &[u8],
    deadline: Instant,
) -> io::Result<(u16, Vec<u8>)> {
    if let Some(mut s) = pool.take(i) {
        match exchange(&mut s, ep, path, body, deadline) {
            Ok((status, out, reusable)) => {
                if reusable {
                    pool.give(i, s);
                }
                return Ok((status, out));
            }
            // A closed idle connection fails at once; a slow server is not asked twice.
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(e),
            Err(_) => {}
        }
    }
    let mut s = ep.connect(deadline)?;
    let (status, out, reusable) = exchange(&mut s, ep, path, body, deadline)?;
    if reusable {
        pool.give(i, s);
    }
    Ok((status, out))
}

/// Sends one request on `s` and reads its response; also says whether `s` can be reused.
fn exchange(
    s: &mut TcpStream,
    ep: &Endpoint,
    path: &str,
    body: &[u8],
    deadline: Instant,
) -> io::Result<(u16, Vec<u8>, bool)> {
    s.set_write_timeout(Some(remaining(deadline)?))?;
    s.write_all(&request_bytes(ep, path, body, false))?;
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p;
        }
        if read_some(s, &mut buf, deadline)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection closed before the response head",
            ));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let reusable = head.starts_with("http/1.1") && !head.contains("connection: close");
    let (status, chunked, len) = parse_head(&buf[..head_end])?;
    let mut raw = buf.split_off(head_end + 4);
    if chunked {
        let mut out = Vec::new();
        loop {
            let (used, done) = dechunk(&raw, &mut out)?;
            raw.drain(..used);
            if done {
                return Ok((status, out, reusable));
            }
            if read_some(s, &mut raw, deadline)? == 0 {
                return Err(bad("connection closed inside a chunked body"));
            }
        }
    }
    loop {
        if let Some(n) = len
            && raw.len() >= n
        {
            let extra = raw.len() > n;
            raw.truncate(n);
            return Ok((status, raw, reusable && !extra));
        }
        if read_some(s, &mut raw, deadline)? == 0 {
            if len.is_none() {
                return Ok((status, raw, false));
            }
            return Err(bad("connection closed inside the body"));
        }
    }
}

/// A streaming call (a watch): newline-separated JSON messages in a chunked body.
pub(crate) struct Stream {
    sock: TcpStream,
    raw: Vec<u8>,
    data: Vec<u8>,
}

impl Stream {
    /// Sends the request and reads the response head (before `deadline`).
    pub fn open(ep: &Endpoint, path: &str, body: &[u8], deadline: Instant) -> io::Result<Stream> {
        let mut s = ep.connect(deadline)?;
        s.set_write_timeout(Some(remaining(deadline)?))?;
        s.write_all(&request_bytes(ep, path, body, false))?;
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p;
            }
            if read_some(&mut s, &mut buf, deadline)? == 0 {
                return Err(bad("connection closed before the response head"));
            }
        };
        let (status, chunked, _) = parse_head(&buf[..head_end])?;
        if status != 200 || !chunked {
            return Err(bad(&format!("watch answered HTTP {status}")));
        }
        let raw = buf.split_off(head_end + 4);
        Ok(Stream {
            sock: s,
            raw,
            data: Vec::new(),
        })
    }

    /// A second handle on the stream's socket: shutting it down ends a blocked
    /// [`next`](Stream::next) at once (how a dropped async request stops its watch).
    pub fn interrupter(&self) -> io::Result<TcpStream> {
        self.sock.try_clone()
    }

    /// The next message, or `None` if none came before `until`.
    pub fn next(&mut self, until: Instant) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(p) = self.data.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.data.drain(..=p).collect();
                if line.iter().all(|b| b.is_ascii_whitespace()) {
                    continue;
                }
                return Ok(Some(line));
            }
            let (used, done) = dechunk(&self.raw, &mut self.data)?;
            self.raw.drain(..used);
            if done {
                return Err(bad("the watch stream ended"));
            }
            if used > 0 {
                continue;
            }
            match read_some(&mut self.sock, &mut self.raw, until) {
                Ok(0) => return Err(bad("the watch stream was closed")),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let e = Endpoint::parse("http://127.0.0.1:2379/").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("127.0.0.1", 2379));
        assert_eq!(Endpoint::parse("etcd-0").unwrap().port, 2379);
        assert_eq!(Endpoint::parse("[::1]:23").unwrap().host, "::1");
        assert!(Endpoint::parse("https://x:1").is_err());
        assert!(Endpoint::parse("http://x:notaport").is_err());
        assert!(Endpoint::parse("").is_err());
    }

    #[test]
    fn chunks_decode() {
        let mut out = Vec::new();
        let (used, done) = dechunk(b"3\r\nabc\r\n2\r\nde", &mut out).unwrap();
        assert_eq!((used, done, out.as_slice()), (8, false, &b"abc"[..]));
        let (_, done) = dechunk(b"2\r\nde\r\n0\r\n\r\n", &mut out).unwrap();
        assert!(done);
        assert_eq!(out, b"abcde");
    }
}
