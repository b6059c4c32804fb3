use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = netloom::cmd::cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        // One object per line, fields at the top level, for log collectors.
        netloom::cmd::cli::LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        // Escape codes only for a person at a terminal, not for journald.
        netloom::cmd::cli::LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("netloom: error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(netloom::cmd::run(cli)) {
        Ok(code) => code.into(),
        Err(e) => {
            eprintln!("netloom: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
