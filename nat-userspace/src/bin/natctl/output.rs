//! How natctl prints: JSON for `--format json`, Docker-like tables otherwise.
use natd::{api::SandboxView, model::NetworkMode};

pub fn print_json(value: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

/// Left-aligned columns, like docker's tables.
pub fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let text: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect();
        println!("{}", text.join("   ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

pub fn mode_text(view: &SandboxView) -> String {
    match &view.sandbox.mode {
        NetworkMode::Bridge => view
            .sandbox
            .endpoints
            .iter()
            .map(|e| e.network.clone())
            .collect::<Vec<_>>()
            .join(","),
        NetworkMode::None => "none".into(),
        NetworkMode::Host => "host".into(),
        NetworkMode::Container(t) => format!("container:{t}"),
    }
}

/// Bindings as Docker shows them: `0.0.0.0:8080->80/tcp, [::]:8080->80/tcp`.
pub fn ports_text(view: &SandboxView) -> String {
    view.sandbox
        .ports
        .iter()
        .map(|m| format!("{}->{}/{}", m.host_display(), m.container_port, m.proto))
        .collect::<Vec<_>>()
        .join(", ")
}
