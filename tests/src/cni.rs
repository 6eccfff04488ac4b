//! Driving CNI plugins as a runtime does: CNI_* environment, configuration on stdin, run
//! in the lab's host namespace (the runtime's namespace, which is natd's).
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::{Value, json};

use crate::{Lab, natd_bin};

/// natd-cni, built next to natd.
pub fn plugin_bin() -> PathBuf {
    natd_bin().with_file_name("natd-cni")
}

/// Debian's reference plugins (containernetworking-plugins).
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// What a plugin call returned: exit success and stdout as JSON (Null when empty).
#[derive(Debug)]
pub struct Reply {
    pub ok: bool,
    pub json: Value,
    pub stderr: String,
}

impl Reply {
    /// The error code of a failed call.
    pub fn code(&self) -> Option<u64> {
        (!self.ok).then(|| self.json["code"].as_u64()).flatten()
    }
}

/// One call: `plugin` with CNI_COMMAND=`command`, the given CNI_* variables, `conf` on stdin.
pub fn call(lab: &Lab, plugin: &Path, command: &str, vars: &[(&str, &str)], conf: &Value) -> Reply {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", lab.host_path()))
        .arg(plugin)
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", plugin.parent().unwrap_or(Path::new("/")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run the CNI plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("write the configuration");
    let out = child.wait_with_output().expect("wait for the CNI plugin");
    let text = String::from_utf8_lossy(&out.stdout);
    Reply {
        ok: out.status.success(),
        json: if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("plugin printed no JSON ({e}): {text}"))
        },
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// natd-cni's configuration for this lab's natd, as a runtime hands it over.
pub fn natd_conf(lab: &Lab, version: &str, port_mappings: Value) -> Value {
    json!({
        "cniVersion": version,
        "name": "natdnet",
        "type": "natd-cni",
        "socket": lab.socket,
        "network": "bridge",
        "logFile": lab.dir.join("cni.log"),
        "capabilities": { "portMappings": true },
        "runtimeConfig": { "portMappings": port_mappings },
    })
}

/// The CNI_* variables of an attachment.
pub fn attachment<'a>(container_id: &'a str, netns: &'a str, ifname: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_CONTAINERID", container_id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", ifname),
    ]
}
