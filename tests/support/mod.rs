//! Harness for the end-to-end tests: the real `tether-controlplane` and
//! `tether-agent` binaries on 127.0.0.1 ephemeral ports, each run in its own
//! temporary directory, with their JSON log lines captured so that tests
//! wait for events ("control plane ready", "attached") instead of sleeping.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // shared by several test binaries

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use secrecy::SecretString;
use serde_json::Value;
use tether::{
    client::{self, ApiKey, ControlPlaneAddr},
    dial::Credentials,
    proto::{CreateConnectionRequest, CreateEnrollmentTokenRequest, admin_client::AdminClient},
    tls::{self, Trust},
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::Notify,
};
use tonic::{codegen::InterceptedService, transport::Channel};

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(60);

/// A binary built next to the test's own `tetherctl`.
pub fn binary(name: &str) -> PathBuf {
    let ctl = PathBuf::from(env!("CARGO_BIN_EXE_tetherctl"));
    let path = ctl.parent().unwrap().join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (cargo build --workspace --bins; scripts/test.sh does it)",
        path.display()
    );
    path
}

/// Raises the open-file limit to the hard limit, for tests with
/// thousands of sockets (children inherit it).
/// A free loopback port for a program that binds it itself (bound,
/// noted, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Captured JSON log lines of a child process, with waiting.
#[derive(Clone, Default)]
pub struct Logs {
    lines: Arc<Mutex<Vec<Value>>>,
    raw: Arc<Mutex<Vec<String>>>,
    changed: Arc<Notify>,
}

impl Logs {
    pub fn push_line(&self, line: String) {
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            self.lines.lock().unwrap().push(v);
        }
        self.raw.lock().unwrap().push(line);
        self.changed.notify_waiters();
    }

    /// Every line so far, as text.
    pub fn text(&self) -> String {
        self.raw.lock().unwrap().join("\n")
    }

    /// Lines whose message is `msg`.
    pub fn count(&self, msg: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["message"] == msg)
            .count()
    }

    /// Waits for the `n`-th line (1-based) whose message is `msg`, and
    /// returns it.
    pub async fn wait_for_nth(&self, msg: &str, n: usize) -> Value {
        let wait = async {
            loop {
                let notified = self.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let Some(v) = self
                    .lines
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|v| v["message"] == msg)
                    .nth(n - 1)
                {
                    return v.clone();
                }
                notified.await;
            }
        };
        match tokio::time::timeout(WAIT, wait).await {
            Ok(v) => v,
            Err(_) => panic!(
                "no log line {msg:?} (#{n}) within {WAIT:?}; log so far:\n{}",
                self.text()
            ),
        }
    }

    /// Waits for a line (JSON or not) that contains `text` anywhere.
    pub async fn wait_for_text(&self, text: &str) {
        let wait = async {
            loop {
                let notified = self.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.raw.lock().unwrap().iter().any(|l| l.contains(text)) {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(WAIT, wait).await.is_err() {
            panic!(
                "no log line with {text:?} within {WAIT:?}; log so far:\n{}",
                self.text()
            );
        }
    }

    /// Waits for the first line whose message is `msg`.
    pub async fn wait_for(&self, msg: &str) -> Value {
        self.wait_for_nth(msg, 1).await
    }
}

/// Starts `cmd` with stdout captured into `Logs` (stderr too, as raw lines).
pub fn spawn(cmd: Command) -> (Child, Logs) {
    spawn_with_stdin(cmd, Stdio::null())
}

/// [`spawn`] with the given stdin (`Stdio::piped()` to write to the child
/// through `child.stdin`).
pub fn spawn_with_stdin(mut cmd: Command, stdin: Stdio) -> (Child, Logs) {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(stdin)
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "cannot start {:?}: {e} (scripts/install-test-deps.sh installs the test tools)",
            cmd.as_std().get_program()
        )
    });
    let logs = Logs::default();
    for reader in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let logs = logs.clone();
        // Ends at the child's end of output.
        tokio::spawn(async move {
            let mut lines = BufReader::new(reader).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                logs.push_line(line);
            }
        });
    }
    (child, logs)
}

/// Which store the control planes of this test run use: SQLite in the data
/// directory (the default), or with `TETHER_TEST_STORE=postgres` a schema
/// of its own per data directory in the run's database
/// (`TETHER_TEST_PG_DATABASE`, which scripts/test.sh creates and drops), so
/// that a restart on the same directory finds its data again.
pub async fn store_url(data_dir: &Path) -> Option<String> {
    match std::env::var("TETHER_TEST_STORE").as_deref() {
        Err(_) | Ok("" | "sqlite") => return None,
        Ok("postgres") => {}
        Ok(other) => panic!("TETHER_TEST_STORE={other:?}: use sqlite or postgres"),
    }
    let db = std::env::var("TETHER_TEST_PG_DATABASE").expect(
        "TETHER_TEST_STORE=postgres needs TETHER_TEST_PG_DATABASE (a database for this run; scripts/test.sh creates one)",
    );
    let server = std::env::var("TETHER_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        data_dir.as_os_str().as_encoded_bytes(),
    );
    let schema = format!("t_{}", &hex::encode(digest.as_ref())[..16]);
    let url = format!("{server}/{db}");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url}: {e}"));
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .await
        .unwrap();
    Some(format!("{url}?options[search_path]={schema}"))
}

/// Everything the store of `data_dir` holds, as text: the SQLite files, or
/// the PostgreSQL schema dumped by the real `pg_dump`.
pub async fn store_contents(data_dir: &Path) -> String {
    let Some(url) = store_url(data_dir).await else {
        let mut bytes = Vec::new();
        for f in std::fs::read_dir(data_dir).unwrap() {
            let p = f.unwrap().path();
            if p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("tether.db")
            {
                bytes.extend(std::fs::read(&p).unwrap());
            }
        }
        return String::from_utf8_lossy(&bytes).into_owned();
    };
    let (db, schema) = url.split_once("?options[search_path]=").unwrap();
    let out = Command::new("pg_dump")
        .args(["--data-only", "--schema", schema, "--dbname", db])
        .output()
        .await
        .expect("pg_dump (postgresql-client) is installed by scripts/install-test-deps.sh");
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A running control plane.
pub struct ControlPlane {
    pub child: Child,
    pub logs: Logs,
    pub data_dir: PathBuf,
    pub grpc: SocketAddr,
    pub ops: SocketAddr,
}

pub type Admin = AdminClient<InterceptedService<Channel, ApiKey>>;

/// The newest audit events `admin`'s key may read.
pub async fn audit_events(admin: &mut Admin) -> Vec<tether::proto::AuditEvent> {
    admin
        .list_audit_events(tether::proto::ListAuditEventsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .events
}

impl ControlPlane {
    /// Starts a control plane with its data in `data_dir` on `listen`
    /// (port 0 for any), heartbeats every 200 ms.
    pub async fn start_on(data_dir: &Path, listen: &str, extra: &[&str]) -> Self {
        Self::launch(data_dir, listen, store_url(data_dir).await, extra).await
    }

    /// Another replica of `first`: a data directory of its own, the same
    /// PostgreSQL store and the same CA (so agents enrolled anywhere attach
    /// anywhere). Needs `TETHER_TEST_STORE=postgres`.
    pub async fn replica_of(first: &ControlPlane, data_dir: &Path, extra: &[&str]) -> Self {
        let url = store_url(&first.data_dir)
            .await
            .expect("replicas share a PostgreSQL store: run with TETHER_TEST_STORE=postgres");
        let ca = first.data_dir.join("ca.pem");
        let key = first.data_dir.join("ca.key");
        let mut args = vec![
            "--ca-cert-file",
            ca.to_str().unwrap(),
            "--ca-key-file",
            key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Self::launch(data_dir, "127.0.0.1:0", Some(url), &args).await
    }

    /// The binary on `listen` with the test settings, `store` (a
    /// PostgreSQL URL, or SQLite in the data directory) and `extra`;
    /// returns once it is ready.
    async fn launch(data_dir: &Path, listen: &str, store: Option<String>, extra: &[&str]) -> Self {
        let mut cmd = Command::new(binary("tether-controlplane"));
        if let Some(url) = store {
            cmd.env("TETHER_STORE", url);
        }
        cmd.arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", listen, "--ops-listen", "127.0.0.1:0"])
            .args(["--log-format", "json", "--heartbeat-interval", "200ms"])
            .args(["--drain-timeout", "2s"])
            .args(extra);
        let (child, logs) = spawn(cmd);
        let ready = logs.wait_for("control plane ready").await;
        Self {
            child,
            data_dir: data_dir.to_owned(),
            grpc: ready["grpc"].as_str().unwrap().parse().unwrap(),
            ops: ready["ops"].as_str().unwrap().parse().unwrap(),
            logs,
        }
    }

    pub async fn start(data_dir: &Path) -> Self {
        Self::start_on(data_dir, "127.0.0.1:0", &[]).await
    }

    pub fn endpoint(&self) -> String {
        format!("https://{}", self.grpc)
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.data_dir.join("ca.pem")).unwrap()
    }

    pub fn api_key(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.key"))
            .unwrap()
            .trim()
            .to_owned()
    }

    pub fn credentials(&self) -> Credentials {
        Credentials {
            trust: Trust::ca_pem(&self.ca_pem()).unwrap(),
            api_key: ApiKey::new(SecretString::from(self.api_key())),
        }
    }

    pub fn channel(&self) -> Channel {
        let config = tls::client_config(&Trust::ca_pem(&self.ca_pem()).unwrap(), None).unwrap();
        client::channel(&ControlPlaneAddr::parse(&self.endpoint()).unwrap(), config).unwrap()
    }

    /// Admin with any key.
    pub fn admin_with(&self, key: &str) -> Admin {
        AdminClient::with_interceptor(
            self.channel(),
            ApiKey::new(SecretString::from(key.to_owned())),
        )
    }

    /// Credentials with any key.
    pub fn credentials_with(&self, key: &str) -> Credentials {
        Credentials {
            trust: Trust::ca_pem(&self.ca_pem()).unwrap(),
            api_key: ApiKey::new(SecretString::from(key.to_owned())),
        }
    }

    /// Creates a key with the bootstrap admin key; returns the key text.
    pub async fn key(
        &self,
        role: tether::proto::Role,
        org: &str,
        connections: &[&str],
        pools: &[&str],
    ) -> String {
        self.admin()
            .create_api_key(tether::proto::CreateApiKeyRequest {
                role: role as i32,
                org_id: org.into(),
                connections: connections.iter().map(|s| (*s).to_owned()).collect(),
                pools: pools.iter().map(|s| (*s).to_owned()).collect(),
                description: "test".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .api_key
    }

    pub fn admin(&self) -> Admin {
        AdminClient::with_interceptor(
            self.channel(),
            ApiKey::new(SecretString::from(self.api_key())),
        )
    }

    /// A join token for `pool` with `max_uses`.
    pub async fn token(&self, pool: &str, max_uses: u32) -> String {
        self.admin()
            .create_enrollment_token(CreateEnrollmentTokenRequest {
                pool: pool.into(),
                max_uses,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .join_token
    }

    /// Adds a connection with a gateway on a free loopback port; returns
    /// the gateway address.
    pub async fn gateway(&self, name: &str, pool: &str, target: SocketAddr) -> SocketAddr {
        self.admin()
            .create_connection(CreateConnectionRequest {
                name: name.into(),
                pool: pool.into(),
                target_host: target.ip().to_string(),
                target_port: u32::from(target.port()),
                gateway_listen: "127.0.0.1:0".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .gateway_address
            .parse()
            .unwrap()
    }

    /// The text of /metrics.
    pub async fn metrics(&self) -> String {
        http_get(self.ops, "/metrics").await
    }

    /// A counter or gauge value from /metrics (0 when absent).
    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| {
                l.strip_prefix(name_and_labels)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }

    /// SIGTERM and wait for the exit.
    pub async fn stop(mut self) -> std::process::ExitStatus {
        terminate(&mut self.child).await
    }
}

/// Sends SIGTERM and waits (bounded) for the exit.
pub async fn terminate(child: &mut Child) -> std::process::ExitStatus {
    use nix::{sys::signal, unistd::Pid};
    if let Some(pid) = child.id() {
        let _ = signal::kill(
            Pid::from_raw(i32::try_from(pid).unwrap()),
            signal::Signal::SIGTERM,
        );
    }
    tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap()
}

/// A minimal HTTP/1.0 GET on loopback; returns the whole response.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

/// A running agent.
pub struct Agent {
    pub child: Child,
    pub logs: Logs,
    pub state_dir: PathBuf,
}

impl Agent {
    /// Starts an agent for `endpoint`, enrolling with `token` if given,
    /// allowed to reach `allow`. Does not wait for anything.
    pub fn spawn(endpoint: &str, state_dir: &Path, token: Option<&str>, allow: &[&str]) -> Self {
        Self::spawn_with(endpoint, state_dir, token, allow, &[], &[])
    }

    /// [`Agent::spawn`] with extra flags and environment variables.
    pub fn spawn_with(
        endpoint: &str,
        state_dir: &Path,
        token: Option<&str>,
        allow: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut cmd = Command::new(binary("tether-agent"));
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.args(["--endpoint", endpoint, "--log-format", "json"])
            .arg("--state-dir")
            .arg(state_dir);
        for rule in allow {
            cmd.args(["--allow", rule]);
        }
        if let Some(t) = token {
            cmd.env("TETHER_JOIN_TOKEN", t);
        }
        let (child, logs) = spawn(cmd);
        Self {
            child,
            logs,
            state_dir: state_dir.to_owned(),
        }
    }

    /// Starts an agent and waits until it attached.
    pub async fn start(
        endpoint: &str,
        state_dir: &Path,
        token: Option<&str>,
        allow: &[&str],
    ) -> Self {
        let agent = Self::spawn(endpoint, state_dir, token, allow);
        agent.logs.wait_for("attached").await;
        agent
    }

    /// The agent id from its state directory.
    pub fn id(&self) -> String {
        let info: Value =
            serde_json::from_slice(&std::fs::read(self.state_dir.join("agent.json")).unwrap())
                .unwrap();
        info["agent_id"].as_str().unwrap().to_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// SIGKILL and wait.
    pub async fn kill9(mut self) {
        self.child.start_kill().unwrap();
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap()
            .unwrap();
    }
}

/// A TCP echo server on 127.0.0.1 that upper-cases nothing: it returns
/// every byte and half-closes when the client does. Runs until the test
/// ends.
pub async fn echo_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
            });
        }
    });
    addr
}

/// A hand-driven agent session: the test sends `AgentFrame`s and reads
/// `ServerFrame`s itself, to play a broken or hostile agent.
pub struct RawSession {
    pub agent_id: String,
    pub tx: tokio::sync::mpsc::Sender<tether::proto::AgentFrame>,
    pub inbound: tonic::Streaming<tether::proto::ServerFrame>,
}

impl ControlPlane {
    /// Enrolls with `csr_der` directly over the API.
    pub async fn enroll_raw(
        &self,
        token: &str,
        csr_der: Vec<u8>,
    ) -> Result<tether::proto::EnrollResponse, tonic::Status> {
        use tether::proto::{EnrollRequest, enrollment_client::EnrollmentClient};
        let token = tether::join::JoinToken::parse(token).unwrap();
        let config = tls::client_config(&Trust::Pin(token.pin), None).unwrap();
        let channel =
            client::channel(&ControlPlaneAddr::parse(&self.endpoint()).unwrap(), config).unwrap();
        let credential =
            secrecy::ExposeSecret::expose_secret(&token.enroll_credential()).to_owned();
        EnrollmentClient::new(channel)
            .enroll(EnrollRequest {
                token: credential,
                csr_der,
                hostname: "test".into(),
                agent_version: "0.0.0".into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Enrolls a fresh agent in `pool` and attaches a raw session for it;
    /// returns once Welcome arrived.
    pub async fn raw_session(&self, pool: &str) -> RawSession {
        self.raw_session_running(pool, &[]).await
    }

    /// A hand-driven session that declares it runs `job_types` (one at a
    /// time).
    pub async fn raw_session_running(&self, pool: &str, job_types: &[&str]) -> RawSession {
        use tether::proto::{
            AgentFrame, Hello, ProtocolVersion, agent_frame, server_frame,
            tunnel_client::TunnelClient,
        };
        let token = self.token(pool, 1).await;
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap();
        let enrolled = self.enroll_raw(&token, csr.der().to_vec()).await.unwrap();
        let identity = tls::Identity::from_pem(
            enrolled.certificate_chain_pem.as_bytes(),
            key.serialize_pem().as_bytes(),
        )
        .unwrap();
        let trust = Trust::ca_pem(enrolled.ca_certificate_pem.as_bytes()).unwrap();
        let channel = client::channel(
            &ControlPlaneAddr::parse(&self.endpoint()).unwrap(),
            tls::client_config(&trust, Some(identity)).unwrap(),
        )
        .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tx.send(AgentFrame {
            kind: Some(agent_frame::Kind::Hello(Hello {
                protocol_version: ProtocolVersion::ProtocolVersion1 as i32,
                agent_id: enrolled.agent_id.clone(),
                capabilities: job_types.iter().map(|t| (*t).to_owned()).collect(),
                max_concurrent_jobs: u32::from(!job_types.is_empty()),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let mut inbound = TunnelClient::new(channel)
            .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let first = inbound.message().await.unwrap().unwrap();
        assert!(
            matches!(first.kind, Some(server_frame::Kind::Welcome(_))),
            "{first:?}"
        );
        RawSession {
            agent_id: enrolled.agent_id,
            tx,
            inbound,
        }
    }
}

/// The next server frame that is not a ping.
pub async fn next_frame(
    inbound: &mut tonic::Streaming<tether::proto::ServerFrame>,
) -> Result<Option<tether::proto::ServerFrame>, tonic::Status> {
    use tether::proto::server_frame;
    loop {
        let f = tokio::time::timeout(WAIT, inbound.message())
            .await
            .unwrap()?;
        if !matches!(
            f.as_ref().and_then(|f| f.kind.as_ref()),
            Some(server_frame::Kind::Ping(_))
        ) {
            return Ok(f);
        }
    }
}

/// Runs tetherctl against `cp`; returns (success, stdout, stderr).
pub async fn ctl(cp: &ControlPlane, args: &[&str], stdin: &[u8]) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(binary("tetherctl"))
        .args(["--endpoint", &cp.endpoint(), "--data-dir"])
        .arg(&cp.data_dir)
        .args(args)
        .env_remove("TETHER_API_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `check` every 50 ms until it returns `Some`; fails the test after
/// [`WAIT`] with `what`. For conditions no log line announces (a health
/// sample arrived, a state changed).
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not so within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
