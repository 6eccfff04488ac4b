//! natctl's side of the API: one HTTP/1.1 request per connection over the Unix socket.
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Serialize, de::DeserializeOwned};
use tokio::net::UnixStream;

use crate::api::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to natd at {path}: {source} (is natd running? set --socket or NATD_SOCKET)")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("talking to natd: {0}")]
    Http(String),
    /// natd refused the request; the message is natd's.
    #[error("{message}")]
    Api { status: u16, message: String },
    /// natd speaks another version of the API, and the request or its answer is one it
    /// (or this natctl) cannot read.
    #[error(
        "natd speaks API {daemon}, this natctl speaks {ours}: {what} ({detail}). Use the natctl that came with \
         that natd, or upgrade natd"
    )]
    Version {
        daemon: String,
        ours: &'static str,
        what: &'static str,
        detail: String,
    },
}

/// The API version a response says its natd speaks (natd before 1.1 says nothing).
fn daemon_version(headers: &hyper::HeaderMap) -> String {
    headers
        .get(crate::api::API_VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| "1.0 (it reports no version)".to_string(), str::to_string)
}

/// A version as (major, minor), from its leading `X.Y`.
fn api_number(version: &str) -> Option<(u32, u32)> {
    let head = version.split_whitespace().next()?;
    let (major, minor) = head.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Whether `daemon` (as `daemon_version` says it) is another version than this natctl's.
fn other_version(daemon: &str) -> bool {
    api_number(daemon) != api_number(crate::api::API_VERSION)
}

/// Whether `daemon` is older than this natctl (so a request it cannot read may use
/// something it does not know: a newer natd takes every earlier shape).
fn older_version(daemon: &str) -> bool {
    api_number(daemon).is_none_or(|d| Some(d) < api_number(crate::api::API_VERSION))
}

/// natd could not read the request body: a shape of a newer API, when natd is another
/// version (axum's JSON rejections: 400 syntax, 422 data, 415 content type).
fn unreadable_request(status: StatusCode, message: &str) -> bool {
    (status == StatusCode::UNPROCESSABLE_ENTITY || status == StatusCode::BAD_REQUEST)
        && (message.starts_with("Failed to deserialize") || message.starts_with("Failed to parse"))
}

fn http(e: impl std::fmt::Display) -> ClientError {
    ClientError::Http(e.to_string())
}

pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_owned(),
        }
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, String, Bytes), ClientError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "natd")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(http)?;
        let response = sender.send_request(request).await.map_err(http)?;
        let status = response.status();
        let daemon = daemon_version(response.headers());
        let bytes = response.into_body().collect().await.map_err(http)?.to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| b.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).to_string());
            if older_version(&daemon) && unreadable_request(status, &message) {
                return Err(ClientError::Version {
                    daemon,
                    ours: crate::api::API_VERSION,
                    what: "the request uses something that natd does not know",
                    detail: message,
                });
            }
            return Err(ClientError::Api {
                status: status.as_u16(),
                message,
            });
        }
        Ok((status, daemon, bytes))
    }

    /// The answer as `T`; one this natctl cannot read from a natd of another version is
    /// said to be that.
    fn parse<T: DeserializeOwned>(daemon: String, bytes: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(bytes).map_err(|e| {
            if other_version(&daemon) {
                ClientError::Version {
                    daemon,
                    ours: crate::api::API_VERSION,
                    what: "its answer has a shape this natctl does not read",
                    detail: e.to_string(),
                }
            } else {
                http(e)
            }
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let (_, daemon, bytes) = self.request(Method::GET, path, None).await?;
        Self::parse(daemon, &bytes)
    }

    pub async fn get_value(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.get(path).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(http)?;
        let (_, daemon, bytes) = self.request(Method::POST, path, Some(body)).await?;
        Self::parse(daemon, &bytes)
    }

    /// DELETE with a JSON body (what to remove), answered with a JSON view.
    pub async fn delete_with<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(http)?;
        let (_, daemon, bytes) = self.request(Method::DELETE, path, Some(body)).await?;
        Self::parse(daemon, &bytes)
    }

    pub async fn delete(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        let (status, daemon, bytes) = self.request(Method::DELETE, path, None).await?;
        if status == StatusCode::NO_CONTENT || bytes.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        Self::parse(daemon, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::{Client, ClientError};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// Serves one connection on a fresh socket with `response` (a raw HTTP/1.1 answer) and
    /// returns what `request` made of it.
    async fn answered_by<T>(
        response: String,
        request: impl AsyncFnOnce(Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let dir = std::env::temp_dir().join(format!("natd-client-{}-{}", std::process::id(), fastrand_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("natd.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = stream.read(&mut buf).await.unwrap();
            stream.write_all(response.as_bytes()).await.unwrap();
        });
        let result = request(Client::new(&socket)).await;
        server.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        result
    }

    fn fastrand_id() -> u128 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    }

    fn http(status: &str, headers: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    /// natd before API versions, as it answered a natctl that gave `--subnet` twice (its
    /// words, recorded from that natd): the client says which versions meet, not serde's
    /// message alone.
    #[tokio::test]
    async fn an_older_natd_is_named_as_such() {
        let old = http(
            "422 Unprocessable Entity",
            "",
            r#"{"message":"Failed to deserialize the JSON body into the target type: subnet: invalid type: sequence, expected a string at line 1 column 30"}"#,
        );
        let body = serde_json::json!({"name": "n", "subnet": ["10.1.0.0/24", "2001:db8::/64"]});
        let err = answered_by(old, async |c| c.post::<_, serde_json::Value>("/v1/networks", &body).await)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ClientError::Version { .. }), "{text}");
        assert!(
            text.starts_with(&format!(
                "natd speaks API 1.0 (it reports no version), this natctl speaks {}",
                crate::api::API_VERSION
            )),
            "{text}"
        );
        assert!(text.contains("subnet: invalid type"), "natd's own words kept: {text}");

        // The same refusal from a natd of this version is a plain refusal.
        let same = http(
            "422 Unprocessable Entity",
            &format!("natd-api-version: {}\r\n", crate::api::API_VERSION),
            r#"{"message":"Failed to deserialize the JSON body into the target type: name: missing field"}"#,
        );
        let err = answered_by(same, async |c| c.post::<_, serde_json::Value>("/v1/networks", &body).await)
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Api { status: 422, .. }), "{err}");
    }

    /// A newer natd takes every earlier request shape: its refusal is a plain one.
    #[tokio::test]
    async fn a_newer_natds_refusal_is_its_own() {
        let newer = http(
            "422 Unprocessable Entity",
            "natd-api-version: 1.7\r\n",
            r#"{"message":"Failed to deserialize the JSON body into the target type: name: missing field"}"#,
        );
        let body = serde_json::json!({"subnet": "10.1.0.0/24"});
        let err = answered_by(newer, async |c| c.post::<_, serde_json::Value>("/v1/networks", &body).await)
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Api { status: 422, .. }), "{err}");
    }

    /// An answer this natctl cannot read, from a natd of another version, is said to be that.
    #[tokio::test]
    async fn an_unreadable_answer_from_another_version_is_named_as_such() {
        let newer = http("200 OK", "natd-api-version: 2.0\r\n", r#"{"version":7}"#);
        let err = answered_by(newer, async |c| c.get::<crate::api::InfoResponse>("/v1/info").await)
            .await
            .unwrap_err();
        let expected = format!("natd speaks API 2.0, this natctl speaks {}: its answer", crate::api::API_VERSION);
        assert!(err.to_string().starts_with(&expected), "{err}");
    }
}
