//! `network create|ls|inspect|rm|connect|disconnect`.
use natd::{
    api::{ConnectRequest, NetworkCreate, NetworkView, SandboxView, paths},
    client::Client,
};

use crate::{
    CliError, NetworkCommand,
    output::{print_json, print_table},
};

pub async fn network(client: &Client, cmd: &NetworkCommand, json: bool) -> Result<(), CliError> {
    match cmd {
        NetworkCommand::Create { .. } => create(client, cmd, json).await?,
        NetworkCommand::Ls => ls(client, json).await?,
        NetworkCommand::Inspect { name } => {
            let view: NetworkView = client.get(&paths::with_name(paths::NETWORK, name)).await?;
            print_json(&view);
        }
        NetworkCommand::Rm { names } => {
            for name in names {
                client.delete(&paths::with_name(paths::NETWORK, name)).await?;
                println!("{name}");
            }
        }
        NetworkCommand::Connect {
            network,
            sandbox,
            ip,
            ip6,
        } => {
            let body = ConnectRequest {
                sandbox: sandbox.clone(),
                ip: ip.clone(),
                ip6: ip6.clone(),
            };
            let _: SandboxView = client
                .post(&paths::with_name(paths::NETWORK_CONNECT, network), &body)
                .await?;
        }
        NetworkCommand::Disconnect { network, sandbox } => {
            let body = ConnectRequest {
                sandbox: sandbox.clone(),
                ..Default::default()
            };
            let _: SandboxView = client
                .post(&paths::with_name(paths::NETWORK_DISCONNECT, network), &body)
                .await?;
        }
    }
    Ok(())
}

async fn create(client: &Client, cmd: &NetworkCommand, json: bool) -> Result<(), CliError> {
    let NetworkCommand::Create {
        driver,
        subnet,
        gateway,
        ipv6,
        ip_range,
        internal,
        icc,
        mtu,
        opt,
        name,
    } = cmd
    else {
        unreachable!("only called for create")
    };
    let mut options = Vec::new();
    for o in opt {
        let (k, v) = o
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("invalid option {o:?}: expected KEY=VALUE")))?;
        options.push((k.to_string(), v.to_string()));
    }
    let request = NetworkCreate {
        name: name.clone(),
        driver: Some(driver.clone()),
        subnet: subnet.clone(),
        gateway: gateway.clone(),
        ipv6: *ipv6,
        ip_range: ip_range.clone(),
        internal: *internal,
        icc: *icc,
        mtu: *mtu,
        options,
    };
    let view: NetworkView = client.post(paths::NETWORKS, &request).await?;
    if json {
        print_json(&view);
    } else {
        println!("{}", view.network.name);
    }
    Ok(())
}

async fn ls(client: &Client, json: bool) -> Result<(), CliError> {
    let list: Vec<NetworkView> = client.get(paths::NETWORKS).await?;
    if json {
        print_json(&list);
        return Ok(());
    }
    let rows = list
        .iter()
        .map(|v| {
            let n = &v.network;
            let mut flags = Vec::new();
            if n.internal {
                flags.push("internal");
            }
            if !n.icc {
                flags.push("icc=false");
            }
            let subnets: Vec<String> = std::iter::once(n.subnet.to_string())
                .chain(n.subnet_v6.map(|s| s.to_string()))
                .collect();
            let gateways: Vec<String> = std::iter::once(n.gateway.to_string())
                .chain(n.gateway_v6.map(|g| g.to_string()))
                .collect();
            vec![
                n.name.clone(),
                n.driver.name().into(),
                subnets.join(","),
                gateways.join(","),
                n.bridge.clone(),
                v.sandboxes.len().to_string(),
                flags.join(","),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "DRIVER",
            "SUBNET",
            "GATEWAY",
            "BRIDGE",
            "SANDBOXES",
            "OPTIONS",
        ],
        rows,
    );
    Ok(())
}
