//! The shim server: the daemon that `start` spawns, one per container.
//!
//! It detaches first: its own session and process group (`setsid`), stdin
//! `/dev/null`, stderr the bundle's `shim.log`, and stdout a pipe to
//! `start` that carries one readiness line (`ok`, or `error: <why>`) and
//! is then closed. It becomes a child subreaper, so the container's
//! processes are reparented to it and it reaps them; it then serves the
//! task API on its socket until `shutdown`, and removes the socket.
//! Nothing ties it to the agent: it outlives the agent's restarts.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::shim_async::create_task;
use containerd_shim_protos::ttrpc::r#async::Server;

use crate::error::{Error, Result};
use crate::events::Publisher;
use crate::flags::Flags;
use crate::reaper;
use crate::task::TaskService;

/// The environment variable naming the agent's event (ttrpc) socket.
pub const TTRPC_ADDRESS: &str = "TTRPC_ADDRESS";
/// How long queued events may delay the exit.
const EVENT_FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// Runs the shim server until shutdown.
pub fn serve(flags: &Flags) -> Result<()> {
    let readiness = Readiness::take_stdout()?;
    let result = detach().and_then(|()| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::Sys {
                op: "start async runtime",
                source,
            })?;
        runtime.block_on(run(flags, readiness))
    });
    if let Err(e) = &result {
        tracing::error!("shim server failed: {e}");
    }
    result
}

fn detach() -> Result<()> {
    match nix::unistd::setsid() {
        // Already a session leader: started by hand, not by `start`.
        Ok(_) | Err(nix::errno::Errno::EPERM) => {}
        Err(e) => return Err(Error::sys("setsid", e)),
    }
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| Error::sys("become child subreaper", e))
}

async fn run(flags: &Flags, readiness: Readiness) -> Result<()> {
    let serving = async {
        reaper::start()?;
        let address = std::env::var(TTRPC_ADDRESS).ok();
        let publisher = Arc::new(Publisher::connect(address.as_deref(), &flags.namespace).await);
        let (service, shutdown) = TaskService::new(&flags.namespace, publisher.clone()).await?;
        let mut server = Server::new()
            .bind(&flags.socket)?
            .register_service(create_task(Arc::new(service)));
        server.start().await?;
        Ok::<_, Error>((server, shutdown, publisher))
    }
    .await;
    let (mut server, mut shutdown, publisher) = match serving {
        Ok(s) => {
            readiness.ready();
            s
        }
        Err(e) => {
            readiness.fail(&e);
            return Err(e);
        }
    };
    tracing::info!(socket = %flags.socket, id = %flags.id, "serving");
    let _ = shutdown.wait_for(|exit| *exit).await;
    if let Err(e) = server.shutdown().await {
        tracing::warn!("server shutdown: {e}");
    }
    publisher.close(EVENT_FLUSH_LIMIT).await;
    let path = flags
        .socket
        .strip_prefix("unix://")
        .unwrap_or(&flags.socket);
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(path, "cannot remove the socket: {e}");
    }
    tracing::info!("exiting");
    Ok(())
}

/// The pipe to `start`, taken off stdout so that nothing else writes to it.
#[derive(Debug)]
struct Readiness(File);

impl Readiness {
    fn take_stdout() -> Result<Self> {
        let pipe: OwnedFd = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| Error::Sys {
                op: "dup stdout",
                source,
            })?;
        let null = File::options()
            .write(true)
            .open("/dev/null")
            .map_err(|e| Error::io("/dev/null", e))?;
        nix::unistd::dup2_stdout(&null).map_err(|e| Error::sys("redirect stdout", e))?;
        Ok(Self(File::from(pipe)))
    }

    fn ready(mut self) {
        let _ = self.0.write_all(b"ok\n");
    }

    fn fail(mut self, e: &Error) {
        let line = e.to_string().replace('\n', " ");
        let _ = writeln!(self.0, "error: {line}");
    }
}
