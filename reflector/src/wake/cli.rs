//! The `oasis-reflector wake` and `wake-status` commands, which run beside a serving reflector
//! and read its exported files (they cannot open its sled database).

use super::*;

/// `oasis-reflector wake`: resolves each MAC or NAME (from this reflector's inventory file)
/// and sends from this box.
pub async fn wake_command(
    state: &Path,
    to: Option<&str>,
    password: Option<&str>,
    targets: &[String],
) -> anyhow::Result<Vec<WakeSent>> {
    let password = match password {
        Some(p) => p.parse::<wol::Password>()?.as_bytes().to_vec(),
        None => Vec::new(),
    };
    let to = match to {
        None => None,
        Some(s) => Some(parse_to(s)?),
    };
    let inventory: Vec<DeviceEntry> = match std::fs::read(devices_file(state)) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let mut list = Vec::new();
    for t in targets {
        if let Ok(mac) = t.parse::<wol::Mac>() {
            list.push(WakeTarget {
                device: String::new(),
                mac: mac.0,
                to,
                password: password.clone(),
            });
            continue;
        }
        let Some(d) = inventory.iter().find(|d| &d.info.name == t) else {
            anyhow::bail!(
                "{t:?} is not a MAC address (e.g. 00:11:22:aa:bb:cc) and not a device in this \
                 reflector's inventory ({})",
                devices_file(state).display()
            );
        };
        let Some(mac) = d.info.macs.first() else {
            anyhow::bail!("device {t} reported no MAC address: it cannot be woken");
        };
        list.push(WakeTarget {
            device: t.clone(),
            mac: *mac,
            to: to.or_else(|| route::destination(d)),
            password: password.clone(),
        });
    }
    Ok(wol::relay::send_all(list, SendOptions::default()).await)
}

/// ADDR or ADDR:PORT (port 9 when absent).
pub fn parse_to(s: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, wol::DEFAULT_PORT));
    }
    anyhow::bail!("--to {s:?}: expected ADDR or ADDR:PORT, e.g. 10.1.2.255 or 10.1.2.255:7")
}

/// `oasis-reflector wake-status`: the scheduled runs as last written.
pub fn read_runs(state: &Path) -> anyhow::Result<Vec<RunStatus>> {
    let path = runs_file(state);
    match std::fs::read(&path) {
        Ok(b) => Ok(serde_json::from_slice(&b)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

/// Runs `oasis-reflector wake`; returns the exit code (1 when any target was not sent).
pub fn cli_wake(
    state: &Path,
    to: Option<&str>,
    password: Option<&str>,
    targets: &[String],
    json: bool,
) -> i32 {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(wake_command(state, to, password, targets)) {
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
        Ok(results) => {
            let failed = results.iter().filter(|r| !r.error.is_empty()).count();
            if json {
                let rows: Vec<serde_json::Value> = results.iter().map(sent_json).collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                for r in &results {
                    let who = if r.device.is_empty() {
                        wol::Mac(r.mac).to_string()
                    } else {
                        format!("{} ({})", r.device, wol::Mac(r.mac))
                    };
                    if r.error.is_empty() {
                        println!("woke {who}: {} packets to {}", r.packets, r.sent_to);
                    } else {
                        println!("FAILED {who}: {}", r.error);
                    }
                }
            }
            i32::from(failed > 0)
        }
    }
}

/// A wake result as JSON (MAC as text).
pub fn sent_json(r: &WakeSent) -> serde_json::Value {
    serde_json::json!({
        "device": r.device,
        "mac": wol::Mac(r.mac).to_string(),
        "sent_to": r.sent_to.split(',').filter(|s| !s.is_empty()).collect::<Vec<_>>(),
        "packets": r.packets,
        "error": (!r.error.is_empty()).then_some(&r.error),
    })
}

/// Runs `oasis-reflector wake-status`.
pub fn cli_status(state: &Path, json: bool) -> i32 {
    let runs = match read_runs(state) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 1;
        }
    };
    if json {
        println!("{}", serde_json::to_string(&runs).unwrap_or_default());
        return 0;
    }
    if runs.is_empty() {
        println!("no scheduled wake runs");
    }
    for r in runs {
        let window = if r.window.is_empty() { "none (as soon as possible)" } else { &r.window };
        println!(
            "{} window {} ({}){}",
            r.layer,
            window,
            jiff::Timestamp::from_second(r.start as i64).map(|t| t.to_string()).unwrap_or_default(),
            if r.done { "" } else { " in progress" }
        );
        for m in &r.machines {
            println!(
                "  {:<20} {:<10} wakes {:<2} {}",
                m["name"].as_str().unwrap_or(""),
                m["state"].as_str().unwrap_or(""),
                m["wakes"],
                m["reason"].as_str().unwrap_or("")
            );
        }
    }
    0
}
