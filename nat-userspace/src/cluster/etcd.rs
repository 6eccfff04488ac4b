//! The etcd store, through etcd's v3 JSON gateway (`/v3/...` on the client port) over the
//! HTTP client natd already has: no protobuf toolchain, the same on etcd 3.4 (Debian's) to
//! 3.6, and every request can be replayed with curl.
//!
//! Gateway facts this code depends on (checked against etcd 3.4.23): keys and values are
//! base64; int64 fields come back as JSON strings; zero, false and empty fields are left
//! out of responses (a failed txn has no `succeeded`, an unknown lease's keepalive no
//! `TTL`); unknown request fields are ignored silently, so every field name here matters;
//! a watch answers with an endless stream of newline-separated JSON objects.
use std::time::Duration;

use async_trait::async_trait;
use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, body::Incoming};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Deserializer, de::DeserializeOwned};
use serde_json::{Value, json};
use tokio::net::TcpStream;

use super::store::{ClusterStore, Cond, Event, Kv, Op, StoreError, Watch};

/// How long one member may take to accept a connection before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a request may take once connected.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// A client of one etcd cluster: requests go to the first endpoint that answers.
pub struct Etcd {
    endpoints: Vec<String>,
    /// Index of the member that answered last.
    preferred: std::sync::atomic::AtomicUsize,
}

impl Etcd {
    /// `endpoints`: `HOST:PORT` of each member.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            preferred: Default::default(),
        }
    }

    async fn connect(
        &self,
    ) -> Result<(hyper::client::conn::http1::SendRequest<Full<Bytes>>, String), StoreError> {
        let mut last = String::from("no endpoint configured");
        let first = self.preferred.load(std::sync::atomic::Ordering::Relaxed);
        // The member that answered last first; each member gets its own time budget.
        for i in 0..self.endpoints.len() {
            let index = (first + i) % self.endpoints.len();
            let endpoint = &self.endpoints[index];
            let attempt = async {
                let stream = TcpStream::connect(endpoint.as_str()).await.map_err(|e| e.to_string())?;
                let _ = stream.set_nodelay(true);
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())
            };
            match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
                Ok(Ok((sender, connection))) => {
                    tokio::spawn(connection);
                    self.preferred.store(index, std::sync::atomic::Ordering::Relaxed);
                    return Ok((sender, endpoint.clone()));
                }
                Ok(Err(e)) => last = format!("{endpoint}: {e}"),
                Err(_) => last = format!("{endpoint}: connection timed out"),
            }
        }
        Err(StoreError::Unavailable(last))
    }

    async fn send(&self, path: &str, body: &Value) -> Result<hyper::Response<Incoming>, StoreError> {
        let (sender, endpoint) = self.connect().await?;
        Self::send_on(sender, &endpoint, path, body).await
    }

    async fn send_on(
        mut sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        endpoint: &str,
        path: &str,
        body: &Value,
    ) -> Result<hyper::Response<Incoming>, StoreError> {
        let request = Request::post(path)
            .header("host", endpoint)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| StoreError::Protocol(e.to_string()))?;
        sender
            .send_request(request)
            .await
            .map_err(|e| StoreError::Unavailable(format!("{endpoint}: {e}")))
    }

    async fn call<T: DeserializeOwned>(&self, path: &str, body: Value) -> Result<T, StoreError> {
        let (sender, endpoint) = self.connect().await?;
        let exchange = async {
            let response = Self::send_on(sender, &endpoint, path, &body).await?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?
                .to_bytes();
            if !status.is_success() {
                let message = serde_json::from_slice::<GatewayError>(&bytes)
                    .map(|e| e.message.or(e.error).unwrap_or_default())
                    .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
                return Err(StoreError::Refused(format!("etcd {path}: {status}: {message}")));
            }
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Protocol(format!("etcd {path}: {e}")))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!("etcd {path}: no answer within {REQUEST_TIMEOUT:?}"))
            })?
    }
}

/// `prefix`'s range end: the prefix with its last byte below 0xff incremented.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    B64.encode(bytes)
}

fn op_json(op: &Op) -> Value {
    match op {
        Op::Put { key, value, lease } => {
            let mut put = json!({"key": b64(key), "value": b64(value)});
            if let Some(lease) = lease {
                put["lease"] = json!(lease.to_string());
            }
            json!({"request_put": put})
        }
        Op::Delete { key } => json!({"request_delete_range": {"key": b64(key)}}),
        Op::DeletePrefix { prefix } => json!({"request_delete_range": {
            "key": b64(prefix), "range_end": b64(prefix_end(prefix))}}),
    }
}

fn cond_json(cond: &Cond) -> Value {
    match cond {
        Cond::Absent(key) => {
            json!({"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"})
        }
        Cond::ValueIs(key, value) => {
            json!({"key": b64(key), "target": "VALUE", "result": "EQUAL", "value": b64(value)})
        }
        Cond::Present(key) => {
            json!({"key": b64(key), "target": "CREATE", "result": "GREATER", "create_revision": "0"})
        }
        // A range compare holds when every key of the range satisfies it (an empty range does).
        Cond::UnchangedSince { prefix, revision } => json!({
            "key": b64(prefix), "range_end": b64(prefix_end(prefix)),
            "target": "MOD", "result": "LESS", "mod_revision": (revision + 1).to_string()}),
    }
}

#[async_trait]
impl ClusterStore for Etcd {
    fn describe(&self) -> String {
        format!("etcd://{}", self.endpoints.join(","))
    }

    async fn range(&self, prefix: &str) -> Result<(i64, Vec<Kv>), StoreError> {
        let response: RangeResponse = self
            .call(
                "/v3/kv/range",
                json!({"key": b64(prefix), "range_end": b64(prefix_end(prefix))}),
            )
            .await?;
        let kvs = response
            .kvs
            .into_iter()
            .map(RawKv::decode)
            .collect::<Result<_, _>>()?;
        Ok((response.header.revision, kvs))
    }

    async fn txn(&self, when: &[Cond], then: &[Op]) -> Result<Option<i64>, StoreError> {
        let body = json!({
            "compare": when.iter().map(cond_json).collect::<Vec<_>>(),
            "success": then.iter().map(op_json).collect::<Vec<_>>(),
        });
        let response: TxnResponse = self.call("/v3/kv/txn", body).await?;
        Ok(response.succeeded.then_some(response.header.revision))
    }

    async fn grant(&self, ttl: u64) -> Result<i64, StoreError> {
        let response: LeaseResponse = self
            .call("/v3/lease/grant", json!({"TTL": ttl.to_string()}))
            .await?;
        Ok(response.id)
    }

    async fn keepalive(&self, lease: i64) -> Result<bool, StoreError> {
        // The gateway streams keepalives; one object in, one line out, then it closes.
        let response: KeepaliveResponse = self
            .call("/v3/lease/keepalive", json!({"ID": lease.to_string()}))
            .await?;
        match response.result {
            Some(result) => Ok(result.ttl > 0),
            None => Err(StoreError::Unavailable(format!(
                "etcd lease keepalive: {}",
                response.error.map(|e| e.to_string()).unwrap_or_else(|| "no result".into())
            ))),
        }
    }

    async fn revoke(&self, lease: i64) -> Result<(), StoreError> {
        let _: Value = self
            .call("/v3/lease/revoke", json!({"ID": lease.to_string()}))
            .await?;
        Ok(())
    }

    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<Box<dyn Watch>, StoreError> {
        let body = json!({"create_request": {
            "key": b64(prefix), "range_end": b64(prefix_end(prefix)),
            "start_revision": from_revision.to_string(), "prev_kv": true}});
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.send("/v3/watch", &body))
            .await
            .map_err(|_| StoreError::Unavailable("etcd watch: no answer".into()))??;
        if !response.status().is_success() {
            return Err(StoreError::Refused(format!("etcd watch: {}", response.status())));
        }
        Ok(Box::new(EtcdWatch {
            body: response.into_body(),
            buffer: BytesMut::new(),
        }))
    }
}

struct EtcdWatch {
    body: Incoming,
    buffer: BytesMut,
}

impl EtcdWatch {
    async fn next_line(&mut self) -> Result<Bytes, StoreError> {
        loop {
            if let Some(at) = self.buffer.iter().position(|b| *b == b'\n') {
                let line = self.buffer.split_to(at + 1);
                return Ok(line.freeze().slice(..at));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(StoreError::Unavailable(format!("etcd watch: {e}"))),
                None => return Err(StoreError::Unavailable("etcd watch: stream ended".into())),
            }
        }
    }
}

#[async_trait]
impl Watch for EtcdWatch {
    async fn next(&mut self) -> Result<(i64, Vec<Event>), StoreError> {
        loop {
            let line = self.next_line().await?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let message: WatchMessage = serde_json::from_slice(&line)
                .map_err(|e| StoreError::Protocol(format!("etcd watch: {e}")))?;
            let Some(result) = message.result else {
                let why = message.error.map(|e| e.to_string()).unwrap_or_default();
                return Err(StoreError::Unavailable(format!("etcd watch ended: {why}")));
            };
            if result.canceled {
                return Err(StoreError::Compacted(result.compact_revision));
            }
            if result.events.is_empty() {
                continue; // `created` and progress notifications.
            }
            let events = result
                .events
                .into_iter()
                .map(|e| {
                    let kv = e.kv.decode()?;
                    Ok(if e.kind.as_deref() == Some("DELETE") {
                        Event::Delete(kv.key)
                    } else {
                        Event::Put(kv)
                    })
                })
                .collect::<Result<_, StoreError>>()?;
            return Ok((result.header.revision, events));
        }
    }
}

/// int64 fields: strings from the gateway, numbers accepted too.
fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        Text(String),
        Number(i64),
    }
    match Int::deserialize(d)? {
        Int::Number(n) => Ok(n),
        Int::Text(t) => t.parse().map_err(serde::de::Error::custom),
    }
}

#[derive(Deserialize, Default)]
struct Header {
    #[serde(default, deserialize_with = "int64")]
    revision: i64,
}

#[derive(Deserialize)]
struct GatewayError {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawKv {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default, deserialize_with = "int64")]
    mod_revision: i64,
}

impl RawKv {
    fn decode(self) -> Result<Kv, StoreError> {
        let bad = |e: base64::DecodeError| StoreError::Protocol(format!("etcd sent bad base64: {e}"));
        let key = String::from_utf8(B64.decode(&self.key).map_err(bad)?)
            .map_err(|_| StoreError::Protocol("a key that is not UTF-8".into()))?;
        Ok(Kv {
            key,
            value: B64.decode(&self.value).map_err(bad)?,
            mod_revision: self.mod_revision,
        })
    }
}

#[derive(Deserialize)]
struct RangeResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<RawKv>,
}

#[derive(Deserialize)]
struct TxnResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    succeeded: bool,
}

#[derive(Deserialize)]
struct LeaseResponse {
    #[serde(rename = "ID", deserialize_with = "int64")]
    id: i64,
}

#[derive(Deserialize, Default)]
struct KeepaliveResult {
    #[serde(rename = "TTL", default, deserialize_with = "int64")]
    ttl: i64,
}

#[derive(Deserialize)]
struct KeepaliveResponse {
    /// Absent when the stream reports an error instead (`{"error": ...}` with status 200).
    #[serde(default)]
    result: Option<KeepaliveResult>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct WatchMessage {
    #[serde(default)]
    result: Option<WatchResult>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct WatchResult {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    canceled: bool,
    #[serde(default, deserialize_with = "int64")]
    compact_revision: i64,
    #[serde(default)]
    events: Vec<RawEvent>,
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    kv: RawKv,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end("/natd/ips/"), b"/natd/ips0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn decodes_gateway_shapes() {
        let line = br#"{"result":{"header":{"revision":"19"},"events":[{"type":"DELETE","kv":{"key":"L25hdGQvYQ==","mod_revision":"19"}},{"kv":{"key":"L25hdGQvYg==","value":"aG9zdEE=","mod_revision":"19"}}]}}"#;
        let message: WatchMessage = serde_json::from_slice(line).unwrap();
        let result = message.result.unwrap();
        assert_eq!(result.header.revision, 19);
        assert_eq!(result.events[0].kind.as_deref(), Some("DELETE"));
        let kv = result.events.into_iter().nth(1).unwrap().kv.decode().unwrap();
        assert_eq!(
            (kv.key.as_str(), kv.value.as_slice()),
            ("/natd/b", b"hostA".as_slice())
        );
        let failed: TxnResponse = serde_json::from_str(r#"{"header":{"revision":"7"}}"#).unwrap();
        assert!(!failed.succeeded);
        let gone: KeepaliveResponse = serde_json::from_str(r#"{"result":{"header":{},"ID":"999"}}"#).unwrap();
        assert_eq!(gone.result.map(|r| r.ttl), Some(0));
        let failed: KeepaliveResponse =
            serde_json::from_str(r#"{"error":{"grpc_code":14,"http_code":503,"message":"transport is closing"}}"#)
                .unwrap();
        assert!(failed.result.is_none() && failed.error.is_some());
    }
}
