//! The CNI verbs, each a few calls to natd's API.
use std::{collections::HashSet, net::IpAddr, path::Path, str::FromStr as _};

use natd::{
    api::{NetworkView, RunRequest, SandboxView, paths},
    client::{Client, ClientError},
    cni::{CniError, CniResult, Interface, IpConfig, NetConf, Route, code, publish_specs, sandbox_name},
    config::DEFAULT_SOCKET,
    model::{CniAttachment, Endpoint, Network},
    portspec::PublishSpec,
    sys::netlink::{Netlink, format_mac},
};
use serde_json::Value;

use crate::Env;

fn client(conf: &NetConf) -> Client {
    Client::new(conf.socket.as_deref().unwrap_or(Path::new(DEFAULT_SOCKET)))
}

/// natd's answer as a CNI error: unreachable is transient (code 11), a refusal keeps
/// natd's own message.
fn natd_error(what: &str, e: ClientError) -> CniError {
    match e {
        ClientError::Connect { .. } => {
            CniError::new(code::TRY_AGAIN_LATER, format!("{what}: natd is not reachable"))
                .with_details(e.to_string())
        }
        ClientError::Api {
            status: 400 | 404,
            message,
        } => CniError::new(code::INVALID_CONFIG, format!("{what}: natd refused: {message}")),
        other => CniError::new(code::NATD_REFUSED, format!("{what}: natd refused: {other}")),
    }
}

pub async fn add(env: &Env, conf: &NetConf) -> Result<Value, CniError> {
    env.require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])?;
    let publish = publish_specs(&conf.runtime_config.port_mappings)?;
    let client = client(conf);
    let name = sandbox_name(env.container_id(), env.ifname());
    let request = RunRequest {
        name: name.clone(),
        network: Some(conf.network().to_string()),
        netns: env.netns.clone(),
        ifname: env.ifname.clone(),
        publish,
        host_port_over_listener: conf.host_port_over_listener,
        cni: Some(CniAttachment {
            container_id: env.container_id().to_string(),
            ifname: env.ifname().to_string(),
            network: conf.name.clone(),
            // natd decides: only a container's first attachment routes by default.
            default_route: true,
        }),
        ..Default::default()
    };
    // The network first: an unknown one is refused before anything exists.
    let network = client
        .get::<NetworkView>(&paths::with_name(paths::NETWORK, conf.network()))
        .await
        .map_err(|e| natd_error("reading the network", e))?
        .network;
    let view: SandboxView = client
        .post(paths::SANDBOXES, &request)
        .await
        .map_err(|e| natd_error("attaching the container", e))?;
    let result = match describe(env, conf, &view, &network).await {
        Ok(result) => result,
        Err(e) => {
            // Never leave an attachment behind that the runtime believes failed.
            let _ = client.delete(&paths::with_name(paths::SANDBOX, &name)).await;
            return Err(e);
        }
    };
    Ok(merge_previous(
        conf.prev_result.as_ref(),
        result.to_json(&conf.cni_version),
    ))
}

/// The result natd's attachment gives: bridge, host veth, container interface.
async fn describe(
    env: &Env,
    conf: &NetConf,
    view: &SandboxView,
    network: &Network,
) -> Result<CniResult, CniError> {
    let endpoint = endpoint_of(view, env.ifname())?;
    // The plugin runs in the runtime's namespace, which is natd's: the host-side MACs are
    // there (best effort: a result without them is still valid).
    let nl = Netlink::connect().ok();
    let host_mac = |name: String| {
        let nl = nl.as_ref();
        async move { nl?.link(&name).await.ok().flatten().map(|l| format_mac(&l.mac)) }
    };
    let mut result = CniResult {
        interfaces: vec![
            Interface {
                name: network.bridge.clone(),
                mac: host_mac(network.bridge.clone()).await,
                ..Default::default()
            },
            Interface {
                name: endpoint.host_ifname.clone(),
                mac: host_mac(endpoint.host_ifname.clone()).await,
                ..Default::default()
            },
            Interface {
                name: endpoint.ifname.clone(),
                mac: Some(endpoint.mac.clone()),
                mtu: Some(view.sandbox.mtu.unwrap_or(network.mtu)),
                sandbox: env.netns.clone(),
            },
        ],
        dns: conf.dns.clone().unwrap_or_default(),
        ..Default::default()
    };
    let gateway4 = endpoint
        .gateway
        .or(network.aux_gateway)
        .unwrap_or(network.gateway);
    if let Some(address) = endpoint.ipv4_cidr() {
        result.ips.push(IpConfig {
            address,
            gateway: Some(IpAddr::V4(gateway4)),
            interface: Some(2),
        });
    }
    let gateway6 = network.aux_gateway_v6.or(network.gateway_v6);
    if let Some(address) = endpoint.ipv6_cidr() {
        result.ips.push(IpConfig {
            address,
            gateway: gateway6.map(IpAddr::V6),
            interface: Some(2),
        });
    }
    let routed = view.sandbox.cni.as_ref().is_none_or(|c| c.default_route);
    if !network.internal && routed {
        result.routes.push(Route {
            dst: "0.0.0.0/0".parse().expect("literal"),
            gw: Some(IpAddr::V4(gateway4)),
        });
        if let (Some(gw), Some(_)) = (gateway6, endpoint.ipv6) {
            result.routes.push(Route {
                dst: "::/0".parse().expect("literal"),
                gw: Some(IpAddr::V6(gw)),
            });
        }
    }
    Ok(result)
}

fn endpoint_of<'a>(view: &'a SandboxView, ifname: &str) -> Result<&'a Endpoint, CniError> {
    view.sandbox
        .endpoints
        .iter()
        .find(|e| e.ifname == ifname)
        .ok_or_else(|| {
            CniError::new(
                code::NATD_REFUSED,
                format!("natd's sandbox {} has no interface {ifname}", view.sandbox.name),
            )
        })
}

/// A chained call passes the previous plugins' result through, with ours appended.
fn merge_previous(previous: Option<&Value>, ours: Value) -> Value {
    let Some(previous) = previous.filter(|p| p.is_object()) else {
        return ours;
    };
    let mut merged = previous.clone();
    merged["cniVersion"] = ours["cniVersion"].clone();
    let offset = previous["interfaces"].as_array().map_or(0, Vec::len);
    for key in ["interfaces", "ips", "routes"] {
        let mut list = previous[key].as_array().cloned().unwrap_or_default();
        for item in ours[key].as_array().cloned().unwrap_or_default() {
            let mut item = item;
            if key == "ips"
                && let Some(index) = item["interface"].as_u64()
            {
                item["interface"] = (index + offset as u64).into();
            }
            list.push(item);
        }
        merged[key] = Value::Array(list);
    }
    if merged["dns"].as_object().is_none_or(|d| d.is_empty()) {
        merged["dns"] = ours["dns"].clone();
    }
    merged
}

/// Idempotent: an attachment natd does not know, a namespace that is gone, or natd being
/// down all count as done. In the last case natd's reconcile at its next start removes
/// the attachment once the runtime has deleted the namespace.
pub async fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    env.require(&["CNI_CONTAINERID", "CNI_IFNAME"])?;
    let name = sandbox_name(env.container_id(), env.ifname());
    match client(conf)
        .delete(&paths::with_name(paths::SANDBOX, &name))
        .await
    {
        Ok(_) | Err(ClientError::Api { status: 404, .. }) => Ok(()),
        Err(e @ ClientError::Connect { .. }) => {
            eprintln!(
                "natd-cni: DEL {name}: {e}; natd removes the attachment at its next start once the namespace is gone"
            );
            Ok(())
        }
        Err(e) => Err(natd_error("detaching the container", e)),
    }
}

/// The attachment as ADD left it: natd knows it, the interface has its address and
/// default route, and the published ports are the runtime's.
pub async fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    env.require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])?;
    if conf.prev_result.is_none() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "CHECK needs prevResult (the result of ADD)",
        ));
    }
    let name = sandbox_name(env.container_id(), env.ifname());
    let client = client(conf);
    let view: SandboxView = match client.get(&paths::with_name(paths::SANDBOX, &name)).await {
        Err(ClientError::Api { status: 404, .. }) => {
            return Err(CniError::new(
                code::UNKNOWN_CONTAINER,
                format!(
                    "natd has no attachment for container {} ({})",
                    env.container_id(),
                    env.ifname()
                ),
            ));
        }
        other => other.map_err(|e| natd_error("checking the attachment", e))?,
    };
    let network: NetworkView = client
        .get(&paths::with_name(paths::NETWORK, conf.network()))
        .await
        .map_err(|e| natd_error("reading the network", e))?;
    let endpoint = endpoint_of(&view, env.ifname())?;
    let failed = |what: String| CniError::new(code::NATD_REFUSED, what);
    let netns = env.netns.as_deref().unwrap_or_default();
    let inner =
        Netlink::connect_in(Path::new(netns)).map_err(|e| failed(format!("cannot enter {netns}: {e}")))?;
    let link = inner
        .link(env.ifname())
        .await
        .map_err(|e| failed(e.to_string()))?
        .ok_or_else(|| failed(format!("interface {} is missing from {netns}", env.ifname())))?;
    let addresses = inner
        .addresses(link.index)
        .await
        .map_err(|e| failed(e.to_string()))?;
    if let Some(expected) = endpoint.ipv4_cidr()
        && !addresses.contains(&expected)
    {
        return Err(failed(format!("{} lost its address {expected}", env.ifname())));
    }
    if !network.network.internal && view.sandbox.cni.as_ref().is_none_or(|c| c.default_route) {
        let routes = inner.routes_v4().await.map_err(|e| failed(e.to_string()))?;
        if !routes.iter().any(|r| r.destination.prefix() == 0) {
            return Err(failed(format!("the default route of {netns} is missing")));
        }
    }
    let expected: HashSet<String> = publish_specs(&conf.runtime_config.port_mappings)?
        .iter()
        .filter_map(|s| PublishSpec::from_str(s).ok().map(|p| p.to_string()))
        .collect();
    let published: HashSet<String> = view.sandbox.publish.iter().map(ToString::to_string).collect();
    if expected != published {
        return Err(failed(format!(
            "published ports differ: natd has {published:?}, the runtime asked for {expected:?}"
        )));
    }
    Ok(())
}

/// Removes this network's attachments that the runtime no longer lists.
pub async fn gc(conf: &NetConf) -> Result<(), CniError> {
    let keep: HashSet<(&str, &str)> = conf
        .keep_list()
        .unwrap_or_default()
        .iter()
        .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
        .collect();
    let client = client(conf);
    let sandboxes: Vec<SandboxView> = client
        .get(paths::SANDBOXES)
        .await
        .map_err(|e| natd_error("listing attachments", e))?;
    let mut errors = Vec::new();
    for view in &sandboxes {
        let Some(cni) = view.sandbox.cni.as_ref().filter(|c| c.network == conf.name) else {
            continue;
        };
        if keep.contains(&(cni.container_id.as_str(), cni.ifname.as_str())) {
            continue;
        }
        match client
            .delete(&paths::with_name(paths::SANDBOX, &view.sandbox.name))
            .await
        {
            Ok(_) | Err(ClientError::Api { status: 404, .. }) => {}
            Err(e) => errors.push(format!("{}: {e}", view.sandbox.name)),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(
            CniError::new(code::NATD_REFUSED, "some stale attachments could not be removed")
                .with_details(errors.join("; ")),
        )
    }
}

/// Ready when natd answers and has the configured network.
pub async fn status(conf: &NetConf) -> Result<(), CniError> {
    let client = client(conf);
    let unavailable = |why: String| CniError::new(code::NOT_AVAILABLE, why);
    client
        .get_value(paths::INFO)
        .await
        .map_err(|e| unavailable(format!("natd is not available: {e}")))?;
    match client
        .get_value(&paths::with_name(paths::NETWORK, conf.network()))
        .await
    {
        Ok(_) => Ok(()),
        Err(ClientError::Api { status: 404, .. }) => {
            Err(unavailable(format!("natd has no network {:?}", conf.network())))
        }
        Err(e) => Err(unavailable(format!("natd is not available: {e}"))),
    }
}
