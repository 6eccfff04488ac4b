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
    ) -> Result<(StatusCode, Bytes), ClientError> {
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
        let bytes = response.into_body().collect().await.map_err(http)?.to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| b.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).to_string());
            return Err(ClientError::Api {
                status: status.as_u16(),
                message,
            });
        }
        Ok((status, bytes))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let (_, bytes) = self.request(Method::GET, path, None).await?;
        serde_json::from_slice(&bytes).map_err(http)
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
        let (_, bytes) = self.request(Method::POST, path, Some(body)).await?;
        serde_json::from_slice(&bytes).map_err(http)
    }

    /// DELETE with a JSON body (what to remove), answered with a JSON view.
    pub async fn delete_with<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(http)?;
        let (_, bytes) = self.request(Method::DELETE, path, Some(body)).await?;
        serde_json::from_slice(&bytes).map_err(http)
    }

    pub async fn delete(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        let (status, bytes) = self.request(Method::DELETE, path, None).await?;
        if status == StatusCode::NO_CONTENT || bytes.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(http)
    }
}
