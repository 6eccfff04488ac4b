//! The API server: HTTP/JSON on a Unix socket (mode 0600). One mutex around the daemon
//! core serialises mutations; reads take it briefly.
use std::{os::unix::fs::PermissionsExt as _, path::Path, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path as UrlPath, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use tokio::{net::UnixListener, sync::Mutex};

use crate::{
    api::{ConnectRequest, ErrorBody, NetworkCreate, RunRequest},
    daemon::{Daemon, DaemonError},
};

type Shared = Arc<Mutex<Daemon>>;

impl IntoResponse for DaemonError {
    fn into_response(self) -> Response {
        let status = match &self {
            DaemonError::Invalid(_) => StatusCode::BAD_REQUEST,
            DaemonError::NotFound(_) => StatusCode::NOT_FOUND,
            DaemonError::Conflict(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (
            status,
            Json(ErrorBody {
                message: self.to_string(),
            }),
        )
            .into_response()
    }
}

pub fn router(daemon: Shared) -> Router {
    Router::new()
        .route("/v1/info", get(info))
        .route("/v1/networks", get(network_list).post(network_create))
        .route("/v1/networks/{name}", get(network_inspect).delete(network_rm))
        .route("/v1/networks/{name}/connect", post(connect))
        .route("/v1/networks/{name}/disconnect", post(disconnect))
        .route("/v1/sandboxes", get(list).post(run))
        .route("/v1/sandboxes/{name}", get(inspect).delete(rm))
        .route("/v1/reconcile", post(reconcile))
        .route("/v1/stats", get(stats))
        .route("/v1/conntrack", get(conntrack))
        .with_state(daemon)
}

/// Binds the socket (replacing a stale one), restricted to its owner.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

async fn info(State(d): State<Shared>) -> Response {
    Json(d.lock().await.info()).into_response()
}

async fn network_list(State(d): State<Shared>) -> Response {
    Json(d.lock().await.network_list()).into_response()
}

async fn network_create(State(d): State<Shared>, Json(req): Json<NetworkCreate>) -> Response {
    match d.lock().await.network_create(req).await {
        Ok(view) => (StatusCode::CREATED, Json(view)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn network_inspect(State(d): State<Shared>, UrlPath(name): UrlPath<String>) -> Response {
    match d.lock().await.network_inspect(&name) {
        Ok(view) => Json(view).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn network_rm(State(d): State<Shared>, UrlPath(name): UrlPath<String>) -> Response {
    match d.lock().await.network_rm(&name).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn connect(
    State(d): State<Shared>,
    UrlPath(name): UrlPath<String>,
    Json(req): Json<ConnectRequest>,
) -> Response {
    match d.lock().await.connect(&name, req).await {
        Ok(view) => Json(view).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn disconnect(
    State(d): State<Shared>,
    UrlPath(name): UrlPath<String>,
    Json(req): Json<ConnectRequest>,
) -> Response {
    match d.lock().await.disconnect(&name, req).await {
        Ok(view) => Json(view).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn list(State(d): State<Shared>) -> Response {
    Json(d.lock().await.list()).into_response()
}

async fn run(State(d): State<Shared>, Json(req): Json<RunRequest>) -> Response {
    match d.lock().await.run(req).await {
        Ok(view) => (StatusCode::CREATED, Json(view)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn inspect(State(d): State<Shared>, UrlPath(name): UrlPath<String>) -> Response {
    match d.lock().await.inspect(&name) {
        Ok(view) => Json(view).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn rm(State(d): State<Shared>, UrlPath(name): UrlPath<String>) -> Response {
    match d.lock().await.rm(&name).await {
        Ok(warnings) => Json(serde_json::json!({ "warnings": warnings })).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn reconcile(State(d): State<Shared>) -> Response {
    match d.lock().await.reconcile().await {
        Ok(report) => Json(serde_json::json!({ "changes": report })).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn stats(State(d): State<Shared>) -> Response {
    Json(d.lock().await.stats()).into_response()
}

async fn conntrack(State(d): State<Shared>) -> Response {
    Json(d.lock().await.flows()).into_response()
}
