//! `relayapi-mock`: runs the fake provider on a TCP port.
//!
//! The first line on stdout is `listening on http://HOST:PORT` (the bound
//! address), flushed at once so scripts can wait for it. Ctrl-C / SIGTERM stop
//! accepting and give open connections a short grace period.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use relayapi_mock::{MockConfig, DEFAULT_API_KEY};

/// How long open connections (e.g. stalled streams) may keep the process
/// alive after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// A fake OpenAI / Anthropic / Gemini upstream for RelayAPI tests and
/// benchmarks. Faults are injected per request with `x-mock-*` headers (see
/// the crate README).
#[derive(Parser, Debug)]
#[command(name = "relayapi-mock", version)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:9999")]
    listen: String,
    /// The only API key accepted (in each provider's usual place).
    #[arg(long, env = "RELAYAPI_MOCK_API_KEY", default_value = DEFAULT_API_KEY)]
    api_key: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("no local address")?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}")?;
        out.flush()?;
    }

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server =
        relayapi_mock::serve_with_shutdown(listener, MockConfig::new(args.api_key), async move {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    tokio::select! {
        res = &mut server => res.context("server failed")?,
        () = shutdown_signal() => {
            let _ = stop_tx.send(());
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(res) => res.context("server failed")?,
                Err(_) => eprintln!("relayapi-mock: connections still open after {SHUTDOWN_GRACE:?}, exiting"),
            }
        }
    }
    Ok(())
}

/// Completes on Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
