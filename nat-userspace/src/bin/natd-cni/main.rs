//! natd-cni: a CNI plugin (spec 1.1) that attaches a container runtime's network namespace
//! to a natd network. natd does the work (addresses, veth, published ports in its eBPF
//! dataplane); the plugin translates between the CNI protocol and natd's API.
mod verbs;

use std::{
    io::{Read as _, Write as _},
    path::PathBuf,
    process::ExitCode,
};

use natd::cni::{CniError, NetConf, SUPPORTED_VERSIONS, check_version, code, version_at_least};
use serde_json::{Value, json};

/// What the runtime told the plugin through the environment.
pub struct Env {
    pub command: String,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
}

impl Env {
    fn read() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Self {
            command: var("CNI_COMMAND").unwrap_or_default(),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
        }
    }

    /// The named variables, or the spec's "invalid environment" error naming the missing.
    pub fn require(&self, names: &[&str]) -> Result<(), CniError> {
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|name| match *name {
                "CNI_CONTAINERID" => self.container_id.is_none(),
                "CNI_NETNS" => self.netns.is_none(),
                "CNI_IFNAME" => self.ifname.is_none(),
                _ => false,
            })
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("required environment variables {missing:?} missing"),
            ))
        }
    }

    pub fn container_id(&self) -> &str {
        self.container_id.as_deref().unwrap_or_default()
    }

    pub fn ifname(&self) -> &str {
        self.ifname.as_deref().unwrap_or_default()
    }
}

fn main() -> ExitCode {
    let env = Env::read();
    let mut input = String::new();
    let read = std::io::stdin().read_to_string(&mut input);
    // Parsed once: the version (errors are answered in it when it could be read), the log
    // file, and the configuration itself.
    let parsed = serde_json::from_str::<Value>(&input).map_err(|e| e.to_string());
    let asked = parsed.as_ref().ok().and_then(|v| v["cniVersion"].as_str().map(str::to_string));
    let version = asked
        .clone()
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| "1.1.0".to_string());
    let log_file = parsed.as_ref().ok().and_then(|v| v["logFile"].as_str().map(PathBuf::from));
    let outcome = match read {
        Err(e) => Err(
            CniError::new(code::IO_FAILURE, "cannot read the configuration from stdin")
                .with_details(e.to_string()),
        ),
        Ok(_) => dispatch(&env, parsed, asked),
    };
    let container = env.container_id.clone().unwrap_or_default();
    match outcome {
        Ok(output) => {
            log(
                log_file.as_ref(),
                &format!("{} {container} {}: ok", env.command, env.ifname()),
            );
            if let Some(value) = output {
                println!("{value}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            log(
                log_file.as_ref(),
                &format!(
                    "{} {container} {}: error {}: {e}",
                    env.command,
                    env.ifname(),
                    e.code
                ),
            );
            // libcni and podman read the error object from stdout.
            println!("{}", e.to_json(&version));
            ExitCode::FAILURE
        }
    }
}

fn dispatch(env: &Env, parsed: Result<Value, String>, asked: Option<String>) -> Result<Option<Value>, CniError> {
    if env.command == "VERSION" {
        // VERSION takes `{"cniVersion": ...}` (or nothing) and answers with the list.
        let asked = asked.unwrap_or_else(|| "1.1.0".to_string());
        return Ok(Some(json!({ "cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS })));
    }
    if !matches!(env.command.as_str(), "ADD" | "DEL" | "CHECK" | "GC" | "STATUS") {
        return Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("unknown CNI_COMMAND: {:?}", env.command),
        ));
    }
    let decode_error = |details: String| {
        CniError::new(code::DECODE_FAILURE, "cannot decode the network configuration").with_details(details)
    };
    let conf: NetConf = serde_json::from_value(parsed.map_err(decode_error)?)
        .map_err(|e| decode_error(e.to_string()))?;
    check_version(&conf.cni_version)?;
    let needs = |minimum: &str| {
        if version_at_least(&conf.cni_version, minimum) {
            Ok(())
        } else {
            Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "config version {} does not allow {} (needs {minimum})",
                    conf.cni_version, env.command
                ),
            ))
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            CniError::new(code::NATD_REFUSED, "cannot start natd-cni's runtime").with_details(e.to_string())
        })?;
    runtime.block_on(async {
        match env.command.as_str() {
            "ADD" => verbs::add(env, &conf).await.map(Some),
            "DEL" => verbs::del(env, &conf).await.map(|()| None),
            "CHECK" => {
                needs("0.4.0")?;
                verbs::check(env, &conf).await.map(|()| None)
            }
            "GC" => {
                needs("1.1.0")?;
                verbs::gc(&conf).await.map(|()| None)
            }
            _ => {
                needs("1.1.0")?;
                verbs::status(&conf).await.map(|()| None)
            }
        }
    })
}

/// Runtimes drop a plugin's stderr on success: a line per call goes to `logFile` when set.
fn log(file: Option<&PathBuf>, line: &str) {
    eprintln!("natd-cni: {line}");
    if let Some(path) = file
        && let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path)
    {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let _ = writeln!(f, "{secs} {line}");
    }
}
