//! `tetherctl dial`: a stream through an agent on stdin/stdout, like `nc`.
//! End of stdin half-closes the stream; the command ends when the target
//! has closed its side and everything was written to stdout.

use anyhow::{Context, bail};
use clap::Args;
use tether::dial::{Credentials, Destination, Dialer};
use tokio::io::{AsyncWriteExt, copy};

use crate::{admin::split_host_port, connect::ConnectArgs};

#[derive(Debug, Args)]
pub(crate) struct DialArgs {
    /// Dial a configured connection by name.
    #[arg(long, conflicts_with_all = ["pool", "target"])]
    connection: Option<String>,
    /// The pool whose agents carry the stream (with TARGET).
    #[arg(long, requires = "target")]
    pool: Option<String>,
    /// host:port as the agent resolves it (with --pool).
    target: Option<String>,
    /// How long to wait for the target to accept: 10s, 1m.
    #[arg(long, default_value = "10s", value_parser = crate::admin::parse_duration)]
    timeout: std::time::Duration,
}

pub(crate) async fn run(c: &ConnectArgs, args: DialArgs) -> anyhow::Result<()> {
    let mut destination = match (args.connection, args.pool, args.target) {
        (Some(name), _, _) => Destination::connection(name),
        (None, Some(pool), Some(target)) => {
            let (host, port) = split_host_port(&target)?;
            Destination::pool(pool, host, port)
        }
        _ => bail!("say where to dial: --connection NAME, or --pool POOL HOST:PORT"),
    };
    destination.timeout = args.timeout;
    let credentials = Credentials {
        trust: c.trust()?,
        api_key: c.api_key()?,
    };
    let dialer = Dialer::connect(&c.endpoint, &credentials)?;
    let stream = dialer.dial(destination).await?;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let upload = async {
        let mut stdin = tokio::io::stdin();
        copy(&mut stdin, &mut wr).await.context("sending stdin")?;
        wr.shutdown().await.context("half-closing the stream")?;
        anyhow::Ok(())
    };
    let download = async {
        let mut stdout = tokio::io::stdout();
        copy(&mut rd, &mut stdout).await.context("receiving")?;
        stdout.flush().await.context("writing stdout")?;
        anyhow::Ok(())
    };
    // The download decides when we are done: a target may close without
    // waiting for our end of input (like `nc -N`).
    tokio::pin!(upload, download);
    tokio::select! {
        r = &mut upload => {
            r?;
            download.await
        }
        r = &mut download => r,
    }
}
