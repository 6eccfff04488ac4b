//! The API server: HTTP/JSON on a Unix socket (mode 0600). One mutex around the daemon
//! core serialises mutations; reads take it briefly.
use std::{os::unix::fs::PermissionsExt as _, path::Path, sync::Arc};

use axum::{
    Json, Router,
    extract::{FromRequest, Path as UrlPath, Request, State, rejection::JsonRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use tokio::{net::UnixListener, sync::Mutex};

use crate::{
    api::{ConnectRequest, ErrorBody, NetworkCreate, PortsRequest, RunRequest, paths},
    daemon::{Daemon, DaemonError, ErrorClass},
};

type Shared = Arc<Mutex<Daemon>>;

/// A JSON request body whose rejections (bad syntax, wrong types, too large, wrong content
/// type) answer like every other refusal: the status axum chose and `{"message": ...}`.
struct Body<T>(T);

impl<S: Send + Sync, T> FromRequest<S> for Body<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
{
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(refusal(rejection.status(), rejection.body_text())),
        }
    }
}

fn refusal(status: StatusCode, message: String) -> Response {
    (status, Json(ErrorBody { message })).into_response()
}

impl IntoResponse for DaemonError {
    fn into_response(self) -> Response {
        let status = match self.class() {
            ErrorClass::Invalid => StatusCode::BAD_REQUEST,
            ErrorClass::NotFound => StatusCode::NOT_FOUND,
            ErrorClass::Conflict => StatusCode::CONFLICT,
            ErrorClass::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorClass::Internal => {
                tracing::error!(error = ?self, "request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
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

pub fn router(daemon: Shared, metrics: Arc<crate::metrics::ApiMetrics>) -> Router {
    let router = Router::new()
        .route(paths::INFO, get(info))
        .route(paths::NETWORKS, get(network_list).post(network_create))
        .route(paths::NETWORK, get(network_inspect).delete(network_rm))
        .route(paths::NETWORK_CONNECT, post(connect))
        .route(paths::NETWORK_DISCONNECT, post(disconnect))
        .route(paths::SANDBOXES, get(list).post(run))
        .route(paths::SANDBOX, get(inspect).delete(rm))
        .route(paths::SANDBOX_PORTS, post(port_add).delete(port_rm))
        .route(paths::RECONCILE, post(reconcile))
        .route(paths::STATS, get(stats))
        .route(paths::CONNTRACK, get(conntrack));
    #[cfg(feature = "failpoints")]
    let router = router.route(paths::FAILPOINTS, post(failpoint));
    router
        .route_layer(axum::middleware::from_fn_with_state(
            metrics,
            crate::metrics::track,
        ))
        .layer(axum::middleware::map_response(with_api_version))
        .with_state(daemon)
}

/// Every answer, refusals and unknown paths included, says which API version natd speaks:
/// a client meeting another version can say so instead of failing on a shape.
async fn with_api_version(mut response: Response) -> Response {
    response.headers_mut().insert(
        crate::api::API_VERSION_HEADER,
        axum::http::HeaderValue::from_static(crate::api::API_VERSION),
    );
    response
}

/// Test builds only: configure a fail point at run time (see `daemon::rollback`).
#[cfg(feature = "failpoints")]
async fn failpoint(Body(req): Body<crate::api::FailpointRequest>) -> Response {
    let result = if req.actions == "off" {
        fail::remove(&req.name);
        Ok(())
    } else {
        fail::cfg(&req.name, &req.actions)
    };
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(message) => (StatusCode::BAD_REQUEST, Json(ErrorBody { message })).into_response(),
    }
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
    let (mut info, keeper) = {
        let daemon = d.lock().await;
        (daemon.info(), daemon.housekeeping())
    };
    // The tables' fill is read without the lock (whole tables, in batches).
    if let Some(keeper) = keeper
        && let Ok(stats) = tokio::task::spawn_blocking(move || keeper.stats(&[], true)).await
        && let Some(detail) = info.dataplane_detail.as_object_mut()
    {
        detail.insert("maps".into(), crate::dataplane::ebpf::table_fill(&stats));
    }
    Json(info).into_response()
}

async fn network_list(State(d): State<Shared>) -> Response {
    Json(d.lock().await.network_list()).into_response()
}

async fn network_create(State(d): State<Shared>, Body(req): Body<NetworkCreate>) -> Response {
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
    Body(req): Body<ConnectRequest>,
) -> Response {
    match d.lock().await.connect(&name, req).await {
        Ok(view) => Json(view).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn disconnect(
    State(d): State<Shared>,
    UrlPath(name): UrlPath<String>,
    Body(req): Body<ConnectRequest>,
) -> Response {
    match d.lock().await.disconnect(&name, req).await {
        Ok(view) => Json(view).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn list(State(d): State<Shared>) -> Response {
    Json(d.lock().await.list()).into_response()
}

async fn run(State(d): State<Shared>, Body(req): Body<RunRequest>) -> Response {
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
    // The maps are read without the lock (a table of hundreds of thousands of entries).
    let source = d.lock().await.stats_source(true);
    match tokio::task::spawn_blocking(move || source.read()).await {
        Ok((dataplane, raw)) => Json(d.lock().await.stats_view(dataplane, raw, None)).into_response(),
        Err(e) => refusal(StatusCode::INTERNAL_SERVER_ERROR, format!("reading statistics: {e}")),
    }
}

async fn conntrack(State(d): State<Shared>) -> Response {
    Json(d.lock().await.flows()).into_response()
}

async fn port_add(
    State(d): State<Shared>,
    UrlPath(name): UrlPath<String>,
    Body(req): Body<PortsRequest>,
) -> Response {
    match d.lock().await.port_add(&name, &req.ports).await {
        Ok(view) => Json(view).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn port_rm(
    State(d): State<Shared>,
    UrlPath(name): UrlPath<String>,
    Body(req): Body<PortsRequest>,
) -> Response {
    match d.lock().await.port_rm(&name, &req.ports).await {
        Ok(view) => Json(view).into_response(),
        Err(e) => e.into_response(),
    }
}
