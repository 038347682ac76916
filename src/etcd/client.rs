//! etcd's v3 API through its JSON gateway: unary calls retried across endpoints within a
//! per-call deadline, watches, and the few encodings the gateway uses (base64 bytes, int64 as
//! strings).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::http::{self, Endpoint, Stream};
use crate::error::{Error, Result};

/// A failed attempt: worth retrying on another member, or final.
enum Attempt {
    Retry(String),
    Final(String),
}

/// The endpoints and the per-call deadline.
#[derive(Debug)]
pub(crate) struct Client {
    pub endpoints: Vec<Endpoint>,
    /// The member that answered last: tried first.
    preferred: AtomicUsize,
    pub call_timeout: Duration,
    /// One attempt on one member at most this long (a stopped member does not eat the call).
    pub attempt_timeout: Duration,
    /// For messages.
    pub name: String,
    /// Kept-alive connections.
    pool: http::Pool,
}

impl Client {
    pub fn new(endpoints: Vec<Endpoint>, call_timeout: Duration, name: String) -> Client {
        let attempt_timeout = (call_timeout / 3).max(Duration::from_millis(200));
        Client {
            endpoints,
            preferred: AtomicUsize::new(0),
            call_timeout,
            attempt_timeout,
            name,
            pool: http::Pool::default(),
        }
    }

    pub fn endpoints_text(&self) -> String {
        self.endpoints
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn unavailable(&self, op: &'static str, detail: String) -> Error {
        Error::EtcdUnavailable {
            name: self.name.clone(),
            op,
            endpoints: self.endpoints_text(),
            detail,
        }
    }

    /// `POST /v3/{path}` with `body`, on the preferred member first, then the others, until
    /// the call deadline. Every call this module makes is idempotent (keys are named by the
    /// client), so an attempt cut off by its timeout is safe to repeat.
    pub fn call(&self, op: &'static str, path: &str, body: &Value) -> Result<Value> {
        self.call_until(op, path, body, Instant::now() + self.call_timeout)
    }

    pub fn call_until(
        &self,
        op: &'static str,
        path: &str,
        body: &Value,
        deadline: Instant,
    ) -> Result<Value> {
        self.call_counted(op, path, body, deadline).map(|(v, _)| v)
    }

    /// As [`call_until`](Client::call_until), also saying how many attempts were made (more
    /// than one: an earlier attempt may have been applied too).
    pub fn call_counted(
        &self,
        op: &'static str,
        path: &str,
        body: &Value,
        deadline: Instant,
    ) -> Result<(Value, u32)> {
        let bytes = serde_json::to_vec(body).expect("JSON of a Value");
        let n = self.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let mut last = String::from("no attempt made");
        let mut backoff = Duration::from_millis(5);
        let mut round = 0u32;
        let mut attempts = 0u32;
        loop {
            for k in 0..n {
                let i = (first + k) % n;
                let now = Instant::now();
                if now >= deadline {
                    return Err(self.unavailable(
                        op,
                        format!("no member answered within the call deadline; last: {last}"),
                    ));
                }
                let until = deadline.min(now + self.attempt_timeout);
                let ep = &self.endpoints[i];
                attempts += 1;
                match attempt(&self.pool, i, ep, path, &bytes, until) {
                    Ok(v) => {
                        self.preferred.store(i, Ordering::Relaxed);
                        return Ok((v, attempts));
                    }
                    Err(Attempt::Retry(e)) => last = format!("{ep}: {e}"),
                    Err(Attempt::Final(e)) => {
                        return Err(Error::EtcdProtocol {
                            name: self.name.clone(),
                            endpoint: ep.to_string(),
                            op,
                            detail: e,
                        });
                    }
                }
            }
            round += 1;
            // Every member failed this round (an election, a restart): wait a little.
            let left = deadline.saturating_duration_since(Instant::now());
            std::thread::sleep(backoff.min(left));
            if round > 1 {
                backoff = (backoff * 2).min(Duration::from_millis(100));
            }
        }
    }

    /// Opens a watch on one key from now on, on the first member that answers. (A watch
    /// from a past revision is "unsynced" on the server, and its events can wait for the
    /// server's 100 ms sync loop: the caller checks the key after the watch is made instead.)
    pub fn watch(&self, key: &str, deadline: Instant) -> Result<Stream> {
        let body = json!({"create_request": {"key": b64(key.as_bytes())}});
        let bytes = serde_json::to_vec(&body).expect("JSON of a Value");
        let n = self.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let mut last = String::new();
        for k in 0..n {
            let i = (first + k) % n;
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let until = deadline.min(now + self.attempt_timeout);
            let ep = &self.endpoints[i];
            match Stream::open(ep, "/v3/watch", &bytes, until) {
                Ok(mut s) => {
                    // The first message confirms the watch ("created").
                    match s.next(until) {
                        Ok(Some(_)) => return Ok(s),
                        Ok(None) => last = format!("{ep}: no watch confirmation in time"),
                        Err(e) => last = format!("{ep}: {e}"),
                    }
                }
                Err(e) => last = format!("{ep}: {e}"),
            }
        }
        Err(self.unavailable("watch", last))
    }

    /// A transaction: `compare`, then `success` or `failure`. Returns (succeeded, the
    /// responses of the branch taken, the header revision).
    pub fn txn(
        &self,
        op: &'static str,
        compare: Vec<Value>,
        success: Vec<Value>,
        failure: Vec<Value>,
    ) -> Result<(bool, Vec<Value>, i64)> {
        self.txn_counted(op, compare, success, failure)
            .map(|(ok, r, rev, _)| (ok, r, rev))
    }

    /// As [`txn`](Client::txn), with the number of attempts.
    pub fn txn_counted(
        &self,
        op: &'static str,
        compare: Vec<Value>,
        success: Vec<Value>,
        failure: Vec<Value>,
    ) -> Result<(bool, Vec<Value>, i64, u32)> {
        let (r, attempts) = self.call_counted(
            op,
            "/v3/kv/txn",
            &json!({"compare": compare, "success": success, "failure": failure}),
            Instant::now() + self.call_timeout,
        )?;
        let ok = r.get("succeeded").and_then(Value::as_bool).unwrap_or(false);
        let responses = match r.get("responses") {
            Some(Value::Array(a)) => a.clone(),
            _ => Vec::new(),
        };
        Ok((ok, responses, revision(&r), attempts))
    }
}

fn attempt(
    pool: &http::Pool,
    i: usize,
    ep: &Endpoint,
    path: &str,
    body: &[u8],
    until: Instant,
) -> Result<Value, Attempt> {
    let (status, bytes) =
        http::post(pool, i, ep, path, body, until).map_err(|e| Attempt::Retry(e.to_string()))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
        if status == 200 {
            Attempt::Final(format!("not JSON ({e})"))
        } else {
            Attempt::Retry(format!("HTTP {status}"))
        }
    })?;
    if status == 200 {
        // A streamed call answers {"result": ...}.
        return Ok(match v {
            Value::Object(mut m) if m.contains_key("result") && !m.contains_key("header") => {
                m.remove("result").unwrap_or(Value::Null)
            }
            v => v,
        });
    }
    let code = v.get("code").and_then(Value::as_i64).unwrap_or(-1);
    let msg = v
        .get("message")
        .or_else(|| v.get("error"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    // gRPC codes: 3 invalid argument, 5 not found, 7 permission denied, 9 failed
    // precondition, 11 out of range, 16 unauthenticated: asking another member will not help.
    match code {
        3 | 5 | 7 | 9 | 11 | 16 => Err(Attempt::Final(format!("HTTP {status}: {msg}"))),
        _ => Err(Attempt::Retry(format!("HTTP {status}: {msg}"))),
    }
}

/// The header's revision.
pub(crate) fn revision(r: &Value) -> i64 {
    int(r.get("header").and_then(|h| h.get("revision")))
}

/// An int64 field (the gateway writes them as strings; absent = 0).
pub(crate) fn int(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The key-values of a range response.
pub(crate) fn kvs(r: &Value) -> Vec<Kv> {
    match r.get("kvs") {
        Some(Value::Array(a)) => a.iter().map(Kv::of).collect(),
        _ => Vec::new(),
    }
}

/// One key-value.
#[derive(Clone, Debug)]
pub(crate) struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub lease: i64,
}

impl Kv {
    fn of(v: &Value) -> Kv {
        let s = |f: &str| v.get(f).and_then(Value::as_str).unwrap_or("");
        Kv {
            key: String::from_utf8_lossy(&unb64(s("key"))).into_owned(),
            value: unb64(s("value")),
            create_revision: int(v.get("create_revision")),
            lease: int(v.get("lease")),
        }
    }
}

/// The end of the range of keys starting with `prefix`.
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A range request over the keys starting with `prefix`.
pub(crate) fn range_prefix(prefix: &str) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("key".into(), b64(prefix.as_bytes()).into());
    m.insert("range_end".into(), b64(&prefix_end(prefix)).into());
    m
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (how the gateway carries bytes).
pub(crate) fn b64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes base64 (invalid characters are skipped).
pub(crate) fn unb64(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0;
    for b in s.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in ["", "f", "fo", "foo", "foob", "fooba", "foobar"] {
            assert_eq!(unb64(&b64(s.as_bytes())), s.as_bytes());
        }
        assert_eq!(b64(b"foo"), "Zm9v");
        assert_eq!(b64(b"fo"), "Zm8=");
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(unb64(&b64(&all)), all);
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end("a/"), b"a0");
        assert_eq!(prefix_end(""), vec![0]);
    }
}
