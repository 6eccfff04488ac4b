//! Prometheus metrics (`--metrics-addr`, Docker's daemon.json key): the dataplane's
//! counters and map fill levels read at scrape time, and natd's own API requests counted
//! and timed as they are served. Encoded by the `prometheus-client` crate (OpenMetrics text).
use std::{net::SocketAddr, sync::Arc, time::Instant};

use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::{
    encoding::text::{encode_eof, encode_registry},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::sync::Mutex;

use crate::{api::StatsView, daemon::Daemon};

pub const PATH: &str = "/metrics";
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Counters of the datapath that count translations (the rest are drops or events).
const TRANSLATIONS: &[&str] = &[
    "dnat_new",
    "dnat_established",
    "dnat_reply",
    "snat_new",
    "snat_established",
    "snat_reply",
    "hairpin_new",
    "icmp_error_translated",
    "sock_rewrites",
];

type Labels = Vec<(String, String)>;

fn latency_histogram() -> Histogram {
    // 100 us .. ~3.3 s: a map update is sub-millisecond, a sandbox with a netns tens of ms.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// natd's API requests, by route pattern, method and status.
#[derive(Debug)]
pub struct ApiMetrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        let requests = Family::<Labels, Counter>::default();
        let latency = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let mut registry = Registry::default();
        registry.register(
            "natd_api_requests",
            "API requests served, by route, method and HTTP status",
            requests.clone(),
        );
        registry.register(
            "natd_api_request_duration_seconds",
            "Time to serve an API request, by route and method",
            latency.clone(),
        );
        Self {
            registry,
            requests,
            latency,
        }
    }
}

/// Middleware for the API router (after routing, so the route pattern is known and the
/// label set stays bounded: `/v1/sandboxes/{name}`, never one series per sandbox).
pub async fn track(
    State(metrics): State<Arc<ApiMetrics>>,
    route: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let route = route.map_or_else(|| "unmatched".to_string(), |r| r.as_str().to_string());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let base = vec![("route".to_string(), route), ("method".to_string(), method)];
    metrics
        .latency
        .get_or_create(&base)
        .observe(started.elapsed().as_secs_f64());
    let mut labels = base;
    labels.push(("status".to_string(), response.status().as_u16().to_string()));
    metrics.requests.get_or_create(&labels).inc();
    response
}

/// The dataplane's view at one instant, as metric families.
fn dataplane_registry(
    stats: &StatsView,
    sandboxes: usize,
    networks: usize,
    cluster: Option<&crate::api::ClusterInfo>,
) -> Registry {
    let mut registry = Registry::default();
    let label = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];

    let info = Family::<Labels, Gauge>::default();
    info.get_or_create(&label("dataplane", &stats.dataplane)).set(1);
    registry.register("natd_dataplane_info", "The dataplane natd runs (value 1)", info);

    let drops = Family::<Labels, Counter>::default();
    let translations = Family::<Labels, Counter>::default();
    let events = Family::<Labels, Counter>::default();
    for (name, value) in &stats.counters {
        if let Some(reason) = name.strip_prefix("drop_") {
            drops.get_or_create(&label("reason", reason)).inc_by(*value);
        } else if TRANSLATIONS.contains(&name.as_str()) {
            translations.get_or_create(&label("kind", name)).inc_by(*value);
        } else {
            events.get_or_create(&label("event", name)).inc_by(*value);
        }
    }
    registry.register(
        "natd_drops",
        "Packets dropped by natd's programs, by reason",
        drops,
    );
    registry.register(
        "natd_translations",
        "Packets translated, by kind (new flow, established, reply, ICMP error, socket rewrite)",
        translations,
    );
    registry.register(
        "natd_datapath_events",
        "Other datapath counters (packets seen, fast-path redirects, protocol mix, ...)",
        events,
    );

    let port_packets = Family::<Labels, Counter>::default();
    let port_bytes = Family::<Labels, Counter>::default();
    for mapping in &stats.mappings {
        let labels = vec![
            ("sandbox".to_string(), mapping.sandbox.clone()),
            ("mapping".to_string(), mapping.mapping.clone()),
        ];
        port_packets.get_or_create(&labels).inc_by(mapping.packets);
        port_bytes.get_or_create(&labels).inc_by(mapping.bytes);
    }
    registry.register(
        "natd_published_port_packets",
        "Packets through each published port (new flows and established)",
        port_packets,
    );
    registry.register(
        "natd_published_port_bytes",
        "Bytes through each published port",
        port_bytes,
    );

    let entries = Family::<Labels, Gauge>::default();
    let capacity = Family::<Labels, Gauge>::default();
    for (map, (used, max)) in &stats.maps {
        entries.get_or_create(&label("map", map)).set(*used as i64);
        capacity.get_or_create(&label("map", map)).set(i64::from(*max));
    }
    registry.register(
        "natd_map_entries",
        "Entries in each of natd's kernel maps (the conntrack tables among them)",
        entries,
    );
    registry.register(
        "natd_map_capacity",
        "Capacity of each of natd's kernel maps",
        capacity,
    );
    let memory = Family::<Labels, Gauge>::default();
    for (map, bytes) in &stats.map_memory {
        memory.get_or_create(&label("map", map)).set(i64::try_from(*bytes).unwrap_or(i64::MAX));
    }
    registry.register(
        "natd_map_memory_bytes",
        "Kernel memory charged for each of natd's maps (hash tables: what they hold; LRU and arrays: their capacity)",
        memory,
    );

    let conntrack = Gauge::<i64>::default();
    let conntrack_capacity = Gauge::<i64>::default();
    for (used, max) in stats
        .maps
        .iter()
        .filter(|(m, _)| is_conntrack_map(m))
        .map(|(_, v)| v)
    {
        conntrack.inc_by(*used as i64);
        conntrack_capacity.inc_by(i64::from(*max));
    }
    registry.register(
        "natd_conntrack_entries",
        "Tracked flows (all conntrack tables; eBPF dataplane: as the last expiry pass left them)",
        conntrack,
    );
    registry.register(
        "natd_conntrack_capacity",
        "Flows the conntrack tables can hold",
        conntrack_capacity,
    );

    let objects = Family::<Labels, Gauge>::default();
    objects
        .get_or_create(&label("kind", "sandbox"))
        .set(sandboxes as i64);
    objects
        .get_or_create(&label("kind", "network"))
        .set(networks as i64);
    registry.register("natd_objects", "Sandboxes and networks natd manages", objects);
    if let Some(cluster) = cluster {
        register_cluster(&mut registry, cluster);
    }
    registry
}

/// The cluster store's records natd refuses, and the VXLAN its underlay filter drops.
fn register_cluster(registry: &mut Registry, cluster: &crate::api::ClusterInfo) {
    let label = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
    let rejected = Family::<Labels, Gauge>::default();
    for kind in ["hosts", "networks", "ips", "other"] {
        rejected.get_or_create(&label("kind", kind)).set(0);
    }
    for line in &cluster.rejected_records {
        // "/natd/v1/<kind>/...: why"
        let kind = line
            .strip_prefix(crate::cluster::ROOT)
            .and_then(|rest| rest.split('/').next())
            .filter(|k| ["hosts", "networks", "ips"].contains(k))
            .unwrap_or("other");
        rejected.get_or_create(&label("kind", kind)).inc();
    }
    registry.register(
        "natd_cluster_records_rejected",
        "Records of the cluster store natd does not apply now (natctl info lists them)",
        rejected,
    );
    if let Some(drops) = &cluster.underlay_drops {
        let family = Family::<Labels, Counter>::default();
        family.get_or_create(&label("reason", "non_member")).inc_by(drops.non_member);
        family.get_or_create(&label("reason", "spoofed")).inc_by(drops.spoofed);
        registry.register(
            "natd_overlay_underlay_drops",
            "VXLAN packets for natd's overlay networks the underlay filter dropped",
            family,
        );
    }
}

fn is_conntrack_map(name: &str) -> bool {
    [
        nat_common::names::map::CT4,
        nat_common::names::map::CT4_NEW,
        crate::dataplane::KERNEL_CONNTRACK,
    ]
    .contains(&name)
}

#[derive(Clone)]
struct Scrape {
    daemon: Arc<Mutex<Daemon>>,
    api: Arc<ApiMetrics>,
}

async fn scrape(State(scrape): State<Scrape>) -> Response {
    // The maps are read without the lock, which requests wait for.
    let source = scrape.daemon.lock().await.stats_source(false);
    let Ok((dataplane, raw)) = tokio::task::spawn_blocking(move || source.read()).await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "reading statistics failed").into_response();
    };
    let (stats, sandboxes, networks, cluster) = {
        let daemon = scrape.daemon.lock().await;
        let (sandboxes, networks) = daemon.counts();
        let limit = daemon.metrics_port_series();
        (daemon.stats_view(dataplane, raw, Some(limit)), sandboxes, networks, daemon.cluster_info())
    };
    let mut body = String::new();
    let encoded = encode_registry(&mut body, &scrape.api.registry)
        .and_then(|()| encode_registry(&mut body, &dataplane_registry(&stats, sandboxes, networks, cluster.as_ref())))
        .and_then(|()| encode_eof(&mut body));
    match encoded {
        Ok(()) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}"),
        )
            .into_response(),
    }
}

/// Binds `addr` (so that a taken port fails natd's start, not a later scrape) and returns
/// the server to spawn.
pub async fn serve(
    addr: SocketAddr,
    daemon: Arc<Mutex<Daemon>>,
    api: Arc<ApiMetrics>,
) -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = Router::new()
        .route(PATH, get(scrape))
        .with_state(Scrape { daemon, api });
    Ok(async move { axum::serve(listener, app).await })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MappingStatsView;

    #[test]
    fn counters_are_sorted_into_drops_translations_and_events() {
        let stats = StatsView {
            dataplane: "ebpf".into(),
            counters: [("drop_ct_full", 3), ("dnat_new", 7), ("packets_seen", 11)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            mappings: vec![MappingStatsView {
                sandbox: "web".into(),
                mapping: "0.0.0.0:8080->172.18.0.2:80/tcp".into(),
                mapping_id: 1,
                packets: 5,
                bytes: 300,
            }],
            maps: [(nat_common::names::map::CT4.to_string(), (2usize, 1024u32))]
                .into_iter()
                .collect(),
            map_memory: [(nat_common::names::map::CT4.to_string(), 4096u64)].into_iter().collect(),
        };
        let mut text = String::new();
        encode_registry(&mut text, &dataplane_registry(&stats, 1, 2, None)).unwrap();
        for line in [
            "natd_drops_total{reason=\"ct_full\"} 3",
            "natd_translations_total{kind=\"dnat_new\"} 7",
            "natd_datapath_events_total{event=\"packets_seen\"} 11",
            "natd_published_port_bytes_total{sandbox=\"web\",mapping=\"0.0.0.0:8080->172.18.0.2:80/tcp\"} 300",
            "natd_conntrack_entries 2",
            "natd_conntrack_capacity 1024",
            "natd_map_memory_bytes{map=\"NATD_CT4\"} 4096",
            "natd_objects{kind=\"network\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
    }
}
