//! The running service: build it from a validated [`Config`], learn its ports,
//! run it until SIGTERM/SIGINT (or a test's cancel), then drain.
//!
//! Owns: listeners, the actix-web server and its limits (built from actix-server
//! and actix-http so that every connection passes the per-address cap and the
//! first-bytes deadline before its TLS handshake), the shared state, and the
//! lifetime of background tasks. Architecture invariant: every background
//! task gets the shutdown token and is tracked, so `run_until_stopped` returns
//! only when they have all finished.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_http::error::DispatchError;
use actix_http::{HttpService, Protocol};
use actix_server::{Server, ServerBuilder};
use actix_service::{fn_factory, fn_service, map_config, Service, ServiceFactory};
use actix_web::dev::AppConfig;
use actix_web::{web, App};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use futures_util::FutureExt;
use tokio::sync::Notify;

use crate::aibot_ws::BotLink;
use crate::alerts::{Alerter, Mailer};
use crate::callback::CallbackCredentials;
use crate::channels::{ChannelKind, ChannelName};
use crate::config::Config;
use crate::connections::{ConnectionTable, Refusal, FIRST_BYTES_DEADLINE, HANDSHAKE_DEADLINE};
use crate::dispatch::executor::Executor;
use crate::dispatch::handlers::HandlerSettings;
use crate::dispatch::sending::SendLimits;
use crate::dispatch::{Dispatcher, Outbox};
use crate::egress::Egress;
use crate::health::checks::{self, CheckClock, Checks, Pressure};
use crate::health::links::Links;
use crate::health::{CheckName, HealthBoard, Liveness};
use crate::kf_sync::KfSyncer;
use crate::log_limit::SharedLogLimiter;
use crate::names::Names;
use crate::routes::{self, AppState};
use crate::store::{Store, StoreError, StoreStage};
use crate::supervisor::{Parts, Supervisor};
use crate::telemetry::{self, BuildInfo, Metrics};
use crate::tls::{self, CertificateStore, TlsError};
use crate::wecom::WeCom;
use crate::VERSION;

/// How long in-flight requests get to finish after a stop signal. The compose
/// file's `stop_grace_period` is a little longer than this.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Header read timeout: a slow client (slowloris) is cut off after this.
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection that is being closed may take to read our last answer.
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const KEEP_ALIVE: Duration = Duration::from_secs(75);
/// How often histogram samples are folded into their buckets (and the store's
/// counters copied). Until then each sample waits in the exporter's queue, 8 bytes
/// apiece: ~2 per callback, so at 30k callbacks/s every 5 s held ~2.5 MB and RSS
/// after the load was ~3.5 MiB higher than with 1 s (BENCHMARKS.md, session 10).
const METRICS_UPKEEP_PERIOD: Duration = Duration::from_secs(1);

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {address} ({variable}): {source}")]
    Bind { address: SocketAddr, variable: &'static str, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start: {0}")]
    Component(String),
    #[error("alert email: {0}")]
    Alerts(String),
    #[error("cannot start the HTTP server: {0}")]
    Server(std::io::Error),
}

impl StartupError {
    /// Problems the operator fixes in configuration or files (exit 64), as opposed
    /// to run-time failures.
    pub(crate) fn is_configuration(&self) -> bool {
        matches!(
            self,
            StartupError::Tls(_)
                | StartupError::Alerts(_)
                | StartupError::Store(StoreError::Open { .. } | StoreError::TooNew { .. })
        )
    }
}

/// A built, listening service.
pub struct Application {
    port: u16,
    /// The plain-HTTP listener's port, which only tests ask for.
    #[cfg(feature = "testing")]
    http_port: Option<u16>,
    server: Server,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    state: web::Data<AppState>,
    /// The checks' clock, which only tests move.
    #[cfg(feature = "testing")]
    clock: Arc<CheckClock>,
}

impl Application {
    /// Loads the certificate, opens the store, wires the workers, binds every
    /// listener and starts serving: the start-up story, one step a line.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        tls::install_crypto_provider();
        let store = open_store(&config).await?;
        let metrics = Arc::new(Metrics::new(&BuildInfo {
            version: VERSION.to_owned(),
            backend: store.backend_name(),
            replica: config.replica.clone(),
        }));
        metrics.declare_callbacks(config.channels.iter().map(|c| &c.name));
        Dispatcher::declare(&metrics, &config.channels);
        let health = Arc::new(HealthBoard::new(config.replica.clone()));
        health.set(CheckName::ConfigSecrets, checks::secrets_check(config.secrets_identical()));
        for channel in config.channels.iter().filter(|c| !c.builtin) {
            health.set(CheckName::Config(channel.name.to_string()), checks::channel_config_check(channel));
        }
        let certificates = load_certificates(&config, &health)?;
        let egress = Arc::new(Egress::new(
            store.clone(),
            Arc::clone(&metrics),
            config.replica.clone(),
            config.wecom.egress_check,
        ));
        let channel_names: Vec<ChannelName> = config.channels.iter().map(|c| c.name.clone()).collect();
        egress.restore(&channel_names).await?;
        let wecom = Arc::new(
            WeCom::new(&config, &store, &metrics, &egress).map_err(|e| StartupError::Component(e.to_string()))?,
        );
        // Silence longer than three periods (and a margin) means the supervisor is stuck.
        let liveness = Arc::new(Liveness::new(3 * config.monitoring.timing.interval.as_secs() as i64 + 30));
        let journal_wake = Arc::new(Notify::new());
        let workers =
            Workers::wire(&config, &store, &wecom, &metrics, &health, &liveness, &journal_wake, &certificates, &egress)
                .await?;
        // One throttle for both gates: wrong bearers count together per address.
        let bearer_throttle = routes::bearer::SharedThrottle::default();
        let state = web::Data::new(AppState {
            credentials: CallbackCredentials::from_config(&config),
            last_callback: config.channels.iter().map(|c| (c.name.clone(), Default::default())).collect(),
            metrics: Arc::clone(&metrics),
            health,
            names: Names::new(store.clone(), Arc::clone(&wecom), config.channels.clone()),
            store,
            journal_wake,
            wecom,
            admin_gate: routes::bearer::BearerGate::admin(config.admin_token.clone(), &bearer_throttle),
            send_gate: routes::bearer::BearerGate::send(config.send_token.clone(), &bearer_throttle),
            outbox_wake: Arc::clone(&workers.dispatcher.outbox_wake),
            send_limits: workers.send_limits.clone(),
            surface: config.surface.clone(),
            liveness,
            refusal_log: Default::default(),
            alerter: workers.alerter.clone(),
            aibot: config.aibot.clone(),
            version: VERSION,
            egress,
        });
        let listeners = Listeners::bind(&config, state.clone(), certificates.as_ref())?;
        let shutdown = CancellationToken::new();
        #[cfg(feature = "testing")]
        let clock = Arc::clone(&workers.clock);
        let tasks = workers.spawn(&config, &state, &shutdown);
        tracing::info!(
            port = listeners.port,
            http_port = listeners.http_port,
            tls = certificates.is_some(),
            version = VERSION,
            "wechat-api listening on {}",
            config.listen.bind_address
        );
        #[cfg(feature = "testing")]
        let http_port = listeners.http_port;
        let Listeners { port, server, .. } = listeners;
        Ok(Self {
            port,
            #[cfg(feature = "testing")]
            http_port,
            server,
            shutdown,
            tasks,
            state,
            #[cfg(feature = "testing")]
            clock,
        })
    }

    /// The port of the main (TLS) listener; useful when bound to port 0.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of the optional plain-HTTP listener.
    #[cfg(feature = "testing")]
    pub fn http_port(&self) -> Option<u16> {
        self.http_port
    }

    /// Cancelling this token stops the application gracefully, like SIGTERM.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Liveness (heartbeat, watched tasks), for tests that inject faults.
    #[cfg(feature = "testing")]
    pub fn liveness(&self) -> Arc<Liveness> {
        Arc::clone(&self.state.liveness)
    }

    /// The clock of the duration checks (`outbox:backlog`, `forward:delivery`),
    /// which tests that cannot wait ten minutes move ahead.
    #[cfg(feature = "testing")]
    pub fn check_clock(&self) -> Arc<CheckClock> {
        Arc::clone(&self.clock)
    }

    /// The store, for tests that look behind the HTTP interface.
    #[cfg(feature = "testing")]
    pub fn store(&self) -> Store {
        self.state.store.clone()
    }

    /// Serves until SIGTERM, SIGINT or the shutdown token, then drains requests
    /// (bounded by [`DRAIN_TIMEOUT`]) and waits for background tasks.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Self { server, shutdown, tasks, state, .. } = self;
        let handle = server.handle();
        let mut server = tokio::spawn(server);
        let liveness = Arc::clone(&state.liveness);
        let stop_reason = tokio::select! {
            result = &mut server => {
                shutdown.cancel();
                tasks.close();
                tasks.wait().await;
                return result.map_err(std::io::Error::other)?;
            }
            reason = stop_signal() => reason,
            () = shutdown.cancelled() => "shutdown requested",
            dead = watchdog(&liveness) => {
                // Unrecoverable in-process fault: exit non-zero so the container's
                // restart policy brings the service back.
                tracing::error!("watchdog: {dead} stopped {WATCHDOG_GRACE:?} ago; exiting so the service restarts");
                shutdown.cancel();
                handle.stop(false).await;
                return Err(std::io::Error::other(format!("watchdog: background task {dead} stopped")));
            }
        };
        tracing::info!("{stop_reason}: draining for at most {}s", DRAIN_TIMEOUT.as_secs());
        shutdown.cancel();
        handle.stop(true).await;
        let served = server.await.map_err(std::io::Error::other)?;
        tasks.close();
        tasks.wait().await;
        tracing::info!("stopped");
        served
    }
}

/// The store: PostgreSQL when `DATABASE_URL` is set (replicas), else SQLite in `DATA_DIR`.
async fn open_store(config: &Config) -> Result<Store, StoreError> {
    let store = match &config.store.database {
        Some(database) => {
            tracing::info!(replica = config.replica.as_str(), "store: PostgreSQL at {}", database.shown());
            Store::connect(database.url.expose(), database.pool_size, config.lease).await?
        }
        None => Store::open(&config.store.data_dir)?.with_lease(config.lease),
    };
    Ok(store)
}

/// The certificate store when TLS is on, with its first `tls:certificate` result.
fn load_certificates(config: &Config, health: &HealthBoard) -> Result<Option<Arc<CertificateStore>>, StartupError> {
    let listen = &config.listen;
    if !listen.tls_enabled {
        return Ok(None);
    }
    let store = CertificateStore::open(&listen.cert_path, &listen.key_path)?;
    health.set(CheckName::TlsCertificate, checks::certificate_check(store.not_after()));
    Ok(Some(store))
}

/// The background workers, wired and not yet running.
struct Workers {
    dispatcher: Dispatcher,
    outbox: Outbox,
    /// Present when a Secret may call kf APIs.
    kf_syncer: Option<KfSyncer>,
    /// The AI bots served over the long connection (SPEC §13).
    bot_links: Vec<BotLink>,
    supervisor: Supervisor,
    /// Present when alert email is on.
    mailer: Option<Mailer>,
    /// Queues mail for the mailer; shared with the routes.
    alerter: Alerter,
    /// The clock of the checks that measure durations (tests move it).
    #[cfg(feature = "testing")]
    clock: Arc<CheckClock>,
    /// The send API's limits (SPEC §15); the store volume's floor is `store:free`'s too.
    send_limits: SendLimits,
}

impl Workers {
    #[allow(clippy::too_many_arguments)]
    async fn wire(
        config: &Config,
        store: &Store,
        wecom: &Arc<WeCom>,
        metrics: &Arc<Metrics>,
        health: &Arc<HealthBoard>,
        liveness: &Arc<Liveness>,
        journal_wake: &Arc<Notify>,
        certificates: &Option<Arc<CertificateStore>>,
        egress: &Arc<Egress>,
    ) -> Result<Self, StartupError> {
        let (alerter, mailer) = Alerter::new(config.monitoring.alert_email.as_ref(), Arc::clone(metrics))
            .map_err(|e| StartupError::Alerts(e.to_string()))?;
        egress.mail_through(alerter.clone());
        let first_start = store.first_started_at().await?;
        tracing::debug!(first_start, "store open");
        let clock = Arc::new(CheckClock::default());
        let links = Arc::new(Links::new(
            config.channels.iter().filter(|c| c.long_connection().is_some()).map(|c| c.name.clone()),
        ));
        let send_limits = SendLimits::from_config(config, metrics);
        let executor = Executor::new(config, Arc::clone(wecom), store.clone(), Arc::clone(metrics))
            .map_err(|e| StartupError::Component(e.to_string()))?;
        let outbox_wake = Arc::new(Notify::new());
        let settings = HandlerSettings {
            forward: config.forward.is_some(),
            agent_id: config.channels.builtin_app().and_then(|app| app.agent_id()),
            first_started_at: first_start,
            kf: config.kf.clone(),
            channels: config.channels.clone(),
        };
        let kf_channels: Vec<_> = config.channels.iter().filter(|c| c.kind() == ChannelKind::Kf).collect();
        let (kf_syncer, kf_sync) = KfSyncer::new(store.clone(), Arc::clone(wecom), Arc::clone(journal_wake));
        let kf_enabled = kf_channels.iter().any(|c| wecom.tokens(&c.name).is_ok());
        let dispatcher = Dispatcher {
            store: store.clone(),
            settings,
            wake: Arc::clone(journal_wake),
            outbox_wake: Arc::clone(&outbox_wake),
            kf_sync: kf_enabled.then_some(kf_sync),
            metrics: Arc::clone(metrics),
        };
        let forward_delivery = executor.forward_delivery();
        let outbox = Outbox::new(store.clone(), Arc::new(executor), Arc::clone(metrics), outbox_wake, &config.channels)
            .with_parking(Arc::clone(egress), Arc::clone(&clock));
        let checks = Checks::new(
            config.upload_dir.clone(),
            certificates.clone(),
            store.clone(),
            Arc::clone(wecom),
            Arc::clone(metrics),
            alerter.clone(),
            config.secrets_identical(),
        )
        .with_pressure(Pressure {
            clock: Arc::clone(&clock),
            forward: forward_delivery,
            data_floor: send_limits.data_floor.clone(),
        })
        .with_egress(
            Arc::clone(egress),
            // An AI bot calls no API with a corp id: nothing to probe.
            config
                .channels
                .iter()
                .filter(|c| c.kind() != ChannelKind::Aibot)
                .map(|c| (c.name.clone(), c.corp_id.as_str().to_owned()))
                .collect(),
        )
        .with_aibots(
            config.channels.iter().filter(|c| c.kind() == ChannelKind::Aibot).map(|c| c.name.clone()).collect(),
            Arc::clone(&links),
        );
        let bot_links: Vec<BotLink> = config
            .channels
            .iter()
            .filter(|c| c.long_connection().is_some())
            .map(|channel| BotLink {
                channel: Arc::clone(channel),
                store: store.clone(),
                metrics: Arc::clone(metrics),
                journal_wake: Arc::clone(journal_wake),
                settings: config.aibot.clone(),
                links: Arc::clone(&links),
            })
            .collect();
        let supervisor = Supervisor::new(Parts {
            checks,
            board: Arc::clone(health),
            liveness: Arc::clone(liveness),
            alerter: alerter.clone(),
            store: store.clone(),
            metrics: Arc::clone(metrics),
            timing: config.monitoring.timing,
            replica: config.replica.clone(),
        });
        Ok(Self {
            dispatcher,
            outbox,
            kf_syncer: kf_enabled.then_some(kf_syncer),
            bot_links,
            supervisor,
            mailer,
            alerter,
            #[cfg(feature = "testing")]
            clock,
            send_limits,
        })
    }

    /// Starts every worker under `shutdown`; each one liveness must watch is watched.
    fn spawn(self, config: &Config, state: &AppState, shutdown: &CancellationToken) -> TaskTracker {
        let Self { dispatcher, outbox, kf_syncer, bot_links, supervisor, mailer, .. } = self;
        let (tasks, liveness) = (TaskTracker::new(), &state.liveness);
        let watch = |name, task| liveness.watch(name, tasks.spawn(task).abort_handle());
        tasks.spawn(metrics_upkeep(Arc::clone(&state.metrics), state.store.clone(), shutdown.clone()));
        watch("dispatcher", dispatcher.run(shutdown.clone()).boxed());
        watch("outbox", outbox.run(shutdown.clone()).boxed());
        let metrics = Arc::clone(&state.metrics);
        let media = config
            .retention
            .media
            .map(|keep| crate::housekeeping::MediaRetention { upload_dir: config.upload_dir.clone(), keep });
        watch(
            "retention",
            crate::housekeeping::run(state.store.clone(), config.retention.records, media, metrics, shutdown.clone())
                .boxed(),
        );
        if let Some(kf_syncer) = kf_syncer {
            watch("kf-sync", kf_syncer.run(shutdown.clone()).boxed());
        }
        if !bot_links.is_empty() {
            // One task for all of them: a bot costs no task of its own.
            let shutdown = shutdown.clone();
            let links = futures_util::future::join_all(bot_links.into_iter().map(move |bot| bot.run(shutdown.clone())));
            watch("aibot-ws", async move { drop(links.await) }.boxed());
        }
        watch("supervisor", supervisor.run(shutdown.clone()).boxed());
        if let Some(mailer) = mailer {
            watch("mailer", mailer.run(shutdown.clone()).boxed());
        }
        if let Some(url) = config.monitoring.heartbeat_url.clone() {
            tasks.spawn(heartbeat(url, shutdown.clone()));
        }
        tasks
    }
}

/// The HTTP server, bound and running, and its ports.
struct Listeners {
    port: u16,
    http_port: Option<u16>,
    server: Server,
}

impl Listeners {
    /// Binds the main listener (TLS unless turned off) and the optional plain one.
    ///
    /// Built from actix-web's parts rather than with `HttpServer`, which offers no
    /// way to look at a connection before its TLS handshake: every accepted
    /// connection first passes the [`Gate`] (the per-address cap, then the
    /// first-bytes deadline), and only then is handshaken and handed to
    /// actix-http with the App, configured as `HttpServer` would.
    fn bind(
        config: &Config,
        state: web::Data<AppState>,
        certificates: Option<&Arc<CertificateStore>>,
    ) -> Result<Self, StartupError> {
        let listen = &config.listen;
        let gate = Arc::new(Gate::new(config, &state.metrics));
        let mut builder = Server::build().shutdown_timeout(DRAIN_TIMEOUT.as_secs()).disable_signals();
        let main_listener = bind(SocketAddr::new(listen.bind_address, listen.https_port), "HTTPS_PORT")?;
        let port = main_listener.local_addr().map_err(StartupError::Server)?.port();
        builder = match certificates {
            Some(store) => {
                let mut tls = store.server_config()?;
                // HTTP/1.1 only: HTTP/2 is not served (its stream floods, SECURITY.md).
                tls.alpn_protocols = vec![b"http/1.1".to_vec()];
                let handshake = Tls(tokio_rustls::TlsAcceptor::from(Arc::new(tls)));
                serve(builder, main_listener, &state, &gate, handshake)
            }
            None => serve(builder, main_listener, &state, &gate, Plain),
        }
        .map_err(StartupError::Server)?;
        let mut http_port = None;
        if let Some(plain) = listen.http_port {
            let listener = bind(SocketAddr::new(listen.bind_address, plain), "HTTP_PORT")?;
            http_port = Some(listener.local_addr().map_err(StartupError::Server)?.port());
            builder = serve(builder, listener, &state, &gate, Plain).map_err(StartupError::Server)?;
        }
        Ok(Self { port, http_port, server: builder.run() })
    }
}

/// What every accepted connection passes before any HTTP (SPEC §15): its
/// address's share of connections, then the deadline for its first bytes. A
/// silent socket therefore never reaches the TLS acceptor, and one address can
/// hold at most `CONNECTIONS_PER_ADDRESS` of the listener's connections.
struct Gate {
    table: Arc<ConnectionTable>,
    /// `wechat_api_connections_refused_total`, one series per [`Refusal`].
    refused: Vec<(Refusal, metrics::Counter)>,
    log: SharedLogLimiter,
}

impl Gate {
    fn new(config: &Config, metrics: &Metrics) -> Self {
        let surface = &config.surface;
        let exempt = surface.trusted_networks.and(&surface.trusted_proxies);
        let refused = Refusal::ALL
            .iter()
            .map(|r| (*r, metrics.counter(telemetry::CONNECTIONS_REFUSED_TOTAL, &[("reason", r.as_str().to_owned())])))
            .collect();
        Self {
            table: ConnectionTable::new(config.limits.connections_per_address, exempt),
            refused,
            log: SharedLogLimiter::default(),
        }
    }

    /// Counts a connection closed unserved; a line for it, at most ten a minute
    /// per reason (the next line written says how many were not).
    fn refuse(&self, refusal: Refusal, peer: SocketAddr) {
        if let Some((_, counter)) = self.refused.iter().find(|(r, _)| *r == refusal) {
            counter.increment(1);
        }
        let Some(more) = self.log.admit(refusal.as_str()) else { return };
        tracing::warn!(client = %peer.ip().to_canonical(), reason = refusal.as_str(), "connection closed: {refusal}{more}");
    }
}

/// Makes dropping `stream` reset the connection: a refused peer learns at once,
/// and the kernel keeps nothing of it (no TIME_WAIT) however many there are.
fn close_with_reset(stream: &TcpStream) {
    let _ = rustix::net::sockopt::set_socket_linger(stream, Some(Duration::ZERO));
}

/// How an admitted connection becomes the stream HTTP is spoken on.
trait Handshake: Clone + Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + 'static;
    /// Whether the listener is `https` (what the App's configuration says).
    const SECURE: bool;
    fn handshake(&self, stream: TcpStream) -> impl Future<Output = std::io::Result<Self::Stream>>;
}

/// Plain HTTP: the TCP stream itself.
#[derive(Clone)]
struct Plain;

impl Handshake for Plain {
    type Stream = TcpStream;
    const SECURE: bool = false;
    async fn handshake(&self, stream: TcpStream) -> std::io::Result<TcpStream> {
        Ok(stream)
    }
}

/// TLS with the served certificate; its deadline is kept by [`connection`].
#[derive(Clone)]
struct Tls(tokio_rustls::TlsAcceptor);

impl Handshake for Tls {
    type Stream = tokio_rustls::server::TlsStream<TcpStream>;
    const SECURE: bool = true;
    fn handshake(&self, stream: TcpStream) -> impl Future<Output = std::io::Result<Self::Stream>> {
        self.0.accept(stream)
    }
}

/// Adds `listener` to the server: each worker runs the App behind actix-http
/// (the limits of `HttpServer` set the same way), every connection through
/// [`connection`].
fn serve<H: Handshake>(
    builder: ServerBuilder,
    listener: TcpListener,
    state: &web::Data<AppState>,
    gate: &Arc<Gate>,
    handshake: H,
) -> std::io::Result<ServerBuilder> {
    let local = listener.local_addr()?;
    let (state, gate) = (state.clone(), Arc::clone(gate));
    let draining = builder.graceful_shutdown_signal();
    builder.listen(format!("wechat-api-{local}"), listener, move || {
        let app = App::new()
            .wrap(actix_web::middleware::from_fn(routes::deadline::body_deadline))
            .app_data(state.clone())
            .configure(routes::configure);
        let draining = draining.clone();
        // What `HttpServer` passes: actix-web has no other public constructor
        // (semver-exempt, and pinned by Cargo.lock).
        let app_config = AppConfig::__priv_test_new(H::SECURE, local.to_string(), local);
        let http = HttpService::build()
            .keep_alive(KEEP_ALIVE)
            .client_request_timeout(CLIENT_REQUEST_TIMEOUT)
            .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
            .local_addr(local)
            // Idle keep-alive connections close when a drain starts.
            .graceful_shutdown_signal(move || {
                let draining = draining.clone();
                async move { draining.notified().await }
            })
            .finish(map_config(app, move |()| app_config.clone()));
        let (gate, handshake) = (Arc::clone(&gate), handshake.clone());
        fn_factory(move || {
            let http = http.new_service(());
            let (gate, handshake) = (Arc::clone(&gate), handshake.clone());
            async move {
                let http = Rc::new(http.await?);
                Ok::<_, ()>(fn_service(move |stream: TcpStream| {
                    connection(Arc::clone(&gate), handshake.clone(), Rc::clone(&http), stream)
                }))
            }
        })
    })
}

/// One connection from accept to close: admitted by its address's share, its
/// first bytes within [`FIRST_BYTES_DEADLINE`], its handshake finished within
/// [`HANDSHAKE_DEADLINE`] of the accept, then HTTP. The slot is held until the
/// connection ends.
async fn connection<H, S>(gate: Arc<Gate>, handshake: H, http: Rc<S>, stream: TcpStream) -> Result<(), ()>
where
    H: Handshake,
    S: Service<(H::Stream, Protocol, Option<SocketAddr>), Response = (), Error = DispatchError>,
{
    let accepted = tokio::time::Instant::now();
    let Ok(peer) = stream.peer_addr() else { return Ok(()) };
    let _slot = match gate.table.admit(peer.ip()) {
        Ok(slot) => slot,
        Err(refusal) => {
            close_with_reset(&stream);
            gate.refuse(refusal, peer);
            return Ok(());
        }
    };
    if tokio::time::timeout_at(accepted + FIRST_BYTES_DEADLINE, stream.readable()).await.is_err() {
        close_with_reset(&stream);
        gate.refuse(Refusal::Silent, peer);
        return Ok(());
    }
    let stream = match tokio::time::timeout_at(accepted + HANDSHAKE_DEADLINE, handshake.handshake(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::debug!(client = %peer.ip().to_canonical(), "TLS handshake failed: {error}");
            return Ok(());
        }
        Err(_) => {
            gate.refuse(Refusal::HandshakeTimeout, peer);
            return Ok(());
        }
    };
    std::future::poll_fn(|cx| http.poll_ready(cx)).await.map_err(drop)?;
    http.call((stream, Protocol::Http1, Some(peer))).await.map_err(|error| {
        tracing::debug!(client = %peer.ip().to_canonical(), "connection ended: {error}");
    })
}

/// How long a dead background task is reported by `/api/health/live` before the
/// watchdog ends the process.
pub(crate) const WATCHDOG_GRACE: Duration = Duration::from_secs(60);

/// Resolves with a task's name once it has been dead for [`WATCHDOG_GRACE`].
async fn watchdog(liveness: &Liveness) -> String {
    let mut dead_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        match liveness.dead_tasks().first() {
            None => dead_since = None,
            Some(name) => {
                let since = *dead_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= WATCHDOG_GRACE {
                    return (*name).to_owned();
                }
            }
        }
    }
}

/// `HEARTBEAT_URL`: fetched every minute, a dead-man's switch for an outside monitor.
async fn heartbeat(url: String, shutdown: CancellationToken) {
    let Ok(client) = crate::outbound::client(Duration::from_secs(10)).build() else {
        tracing::error!("HEARTBEAT_URL: cannot build an HTTP client");
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => match client.get(&url).send().await {
                Ok(response) if response.status().is_success() => tracing::debug!("heartbeat sent"),
                Ok(response) => match crate::outbound::refused_redirect(&response) {
                    Some(reason) => tracing::warn!("HEARTBEAT_URL: {reason}"),
                    None => tracing::warn!("HEARTBEAT_URL answered HTTP {}", response.status()),
                },
                Err(error) => tracing::warn!("HEARTBEAT_URL: {}", error.without_url()),
            },
        }
    }
}

/// A peer that reads nothing for this long while we have data for it (a
/// pipelining client that never reads its answers) is disconnected by the kernel.
const SLOW_READER_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections the kernel may queue before they are accepted.
const LISTEN_BACKLOG: i32 = 4096;
/// What the kernel may hold for one connection's unread answers.
const SEND_BUFFER_BYTES: usize = 256 * 1024;

fn bind(address: SocketAddr, variable: &'static str) -> Result<TcpListener, StartupError> {
    let listener = TcpListener::bind(address).map_err(|source| StartupError::Bind { address, variable, source })?;
    // A burst of connections (thousands from one address, refused at once) must
    // not fill the accept queue: past it the kernel drops everyone's SYNs, and a
    // retransmitted SYN costs a second. std listens with 128; the kernel caps
    // this at net.core.somaxconn.
    rustix::net::listen(&listener, LISTEN_BACKLOG).map_err(|e| StartupError::Bind {
        address,
        variable,
        source: e.into(),
    })?;
    // Accepted connections inherit both (Linux): unacknowledged or unread data
    // (zero-window probes included) ends the connection after the timeout, and
    // the queue it may build is bounded.
    let tuned = rustix::net::sockopt::set_tcp_user_timeout(&listener, SLOW_READER_TIMEOUT.as_millis() as u32)
        .and_then(|()| rustix::net::sockopt::set_socket_send_buffer_size(&listener, SEND_BUFFER_BYTES));
    if let Err(error) = tuned {
        tracing::warn!(%address, "cannot bound slow readers on {variable}: {error}");
    }
    Ok(listener)
}

async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers the service can still be stopped by its token.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Folds histogram samples and copies the store's counters into the metrics; the
/// store's stages are recorded as they happen.
async fn metrics_upkeep(metrics: Arc<Metrics>, store: Store, shutdown: CancellationToken) {
    let stages = StoreStage::ALL
        .map(|stage| metrics.histogram(crate::telemetry::STORE_STAGE_SECONDS, &[("stage", stage.as_str().to_owned())]));
    store.stats().observe_stages(Box::new(move |stage, took| {
        if let Some(histogram) = StoreStage::ALL.iter().position(|s| *s == stage).and_then(|i| stages.get(i)) {
            histogram.record(took.as_secs_f64());
        }
    }));
    let commits = metrics.counter(crate::telemetry::STORE_COMMITS_TOTAL, &[]);
    let operations = metrics.counter(crate::telemetry::STORE_OPERATIONS_TOTAL, &[]);
    let synced = metrics.counter(crate::telemetry::STORE_SYNCED_COMMITS_TOTAL, &[]);
    let mut tick = tokio::time::interval(METRICS_UPKEEP_PERIOD);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {
                metrics.run_upkeep();
                let stats = store.stats();
                commits.absolute(stats.commits.load(std::sync::atomic::Ordering::Relaxed));
                operations.absolute(stats.operations.load(std::sync::atomic::Ordering::Relaxed));
                synced.absolute(stats.synced_commits.load(std::sync::atomic::Ordering::Relaxed));
            }
        }
    }
}
