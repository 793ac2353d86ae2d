//! Tracing set-up shared by every binary: human-readable by default, JSON for machines.

use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// Installs the global subscriber; logs go to stderr so stdout stays clean for `--json` output.
/// RUST_LOG overrides the default level (info).
pub fn init(format: LogFormat) {
    init_with_default(format, "info")
}

/// Like [`init`] with another default level (the demo keeps the terminal for its own story).
pub fn init_with_default(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Ends a binary: prints the error chain on one line ("error: publish base@1: ...: cause")
/// and exits 1. Binaries call this instead of returning the error from main, so users see
/// the message, not a debug dump.
pub fn exit_on_error(result: anyhow::Result<()>) {
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
