//! The `dalleserver` binary: configuration, logging, then serve until SIGINT/SIGTERM;
//! or, with `keys new <name>`, print a fresh API key and exit; or, with `verify`, check an
//! annotated PNG against its provenance.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser as _;
use dalleserver::app::{App, AppState};
use dalleserver::config::{Command, Config, Flags, KeysCommand};
use dalleserver::run::status;
use dalleserver::server;

fn main() -> ExitCode {
    let mut flags = Flags::parse();
    match flags.command.take() {
        Some(Command::Keys { action }) => return keys(action),
        Some(Command::Verify {
            annotated,
            raw,
            server,
        }) => return verify(&annotated, raw.as_deref(), server.as_deref()),
        None => {}
    }
    let mut config = match Config::load_with(flags) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("dalleserver: {err}");
            return ExitCode::from(err.exit_code() as u8);
        }
    };
    dalleserver::telemetry::init(&config.log_filter);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    if let Err(err) = config.prepare_data_dir() {
        tracing::error!("{err}");
        eprintln!("dalleserver: {err}");
        return ExitCode::from(err.exit_code() as u8);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("dalleserver: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("dalleserver: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `dalleserver keys new <name>`: the token on stdout's first line (for scripts), then the
/// line for the keys file; the token is shown once and stored nowhere.
fn keys(action: KeysCommand) -> ExitCode {
    let KeysCommand::New { name } = action;
    if !dalleserver::auth::valid_name(&name) {
        eprintln!("dalleserver: bad key name {name:?}: use 1 to 64 of A-Z a-z 0-9 . _ -");
        return ExitCode::from(2);
    }
    let token = match dalleserver::auth::new_token() {
        Ok(token) => token,
        Err(err) => {
            eprintln!("dalleserver: no random source: {err}");
            return ExitCode::FAILURE;
        }
    };
    println!("{token}");
    println!("{}", dalleserver::auth::key_line(&name, &token));
    eprintln!(
        "The first line is the token: give it to the client (Authorization: Bearer <token>); it is not shown again.\n\
         The second line goes into the --api-keys-file; the server picks it up within a second."
    );
    ExitCode::SUCCESS
}

/// `dalleserver verify <annotated.png> [--raw <raw.png>] [--server URL]`.
fn verify(
    annotated: &std::path::Path,
    raw: Option<&std::path::Path>,
    server: Option<&str>,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("dalleserver: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let status = runtime.block_on(dalleserver::provenance::verify::cli::run(
        annotated, raw, server,
    ));
    ExitCode::from(status)
}

async fn run(config: Config) -> anyhow::Result<()> {
    let addr = SocketAddr::new(config.bind, config.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let app = App::build(config)?;
    app.log_startup_report(listener.local_addr()?);
    if let Some(keys) = &app.config.api_keys {
        tracing::info!(path = %keys.path().display(), keys = keys.keys().len(), "API keys required to start runs and change data");
    } else if let Some(warning) =
        dalleserver::auth::exposure_warning(!app.config.openai.mock_mode(), false, app.config.bind)
    {
        tracing::warn!("{warning}");
    }
    let app = Arc::new(app);
    app.resume_queue();
    let app_progress = app.progress.clone();
    let printer = status::spawn(app.progress.clone(), status::INTERVAL);
    // The listener keeps answering polls, hits and health while the runs drain; only then
    // does the server stop accepting connections.
    let drained = {
        let app = app.clone();
        async move {
            server::shutdown_signal().await;
            tokio::select! {
                report = app.drain(app.config.drain_timeout) => report.log(),
                // A second signal (Ctrl-C twice) stops at once; the report says what is lost.
                () = server::shutdown_signal() => {
                    tracing::warn!("second signal: stopping without waiting for the drain");
                    app.journal.drained(std::time::Duration::ZERO).await.log();
                }
            }
        }
    };
    server::serve(listener, AppState(app), drained).await?;
    printer.abort();
    let progress = app_progress.clone();
    if let Ok(Err(err)) = tokio::task::spawn_blocking(move || progress.save_if_dirty()).await {
        tracing::warn!(%err, "could not save the progress statistics");
    }
    // The access log buffers its lines; write the last ones before saying so.
    dalleserver::telemetry::access::flush();
    tracing::info!("stopped");
    Ok(())
}
