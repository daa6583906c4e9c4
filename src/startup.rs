//! The running service: build it from a validated [`Config`], learn its ports,
//! run it until SIGTERM/SIGINT (or a test's cancel), then drain.
//!
//! Owns: listeners, the actix-web server and its limits, the shared state, and
//! the lifetime of background tasks. Architecture invariant: every background
//! task gets the shutdown token and is tracked, so `run_until_stopped` returns
//! only when they have all finished.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use tokio::sync::Notify;

use crate::alerts::Alerter;
use crate::callback::CallbackCredentials;
use crate::config::Config;
use crate::dispatch::actions::Executor;
use crate::dispatch::handlers::HandlerSettings;
use crate::dispatch::{Dispatcher, Outbox};
use crate::health::{HealthBoard, Liveness};
use crate::kf_sync::KfSyncer;
use crate::names::Names;
use crate::routes::{self, AppState};
use crate::store::{retention, Store, StoreError};
use crate::supervisor::checks::{self, Checks};
use crate::supervisor::{Supervisor, Timing};
use crate::telemetry::Metrics;
use crate::tls::{self, CertificateStore, TlsError};
use crate::wecom::WeCom;

/// How long in-flight requests get to finish after a stop signal. The compose
/// file's `stop_grace_period` is a little longer than this.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Header read timeout: a slow client (slowloris) is cut off after this.
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Body read deadline, counted from the end of the head: actix has no body timer,
/// so without this a client sending one byte a second holds its connection forever.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const KEEP_ALIVE: Duration = Duration::from_secs(75);
const METRICS_UPKEEP_PERIOD: Duration = Duration::from_secs(5);

/// The version this binary reports everywhere.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

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
    pub fn is_configuration(&self) -> bool {
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
    http_port: Option<u16>,
    tls: bool,
    server: Server,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    state: web::Data<AppState>,
}

impl Application {
    /// Loads the certificate, binds every listener and starts serving.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        tls::install_crypto_provider();
        let metrics = Arc::new(Metrics::new(VERSION));
        let health = Arc::new(HealthBoard::default());
        health.set("config:secrets", checks::secrets_check(config.secrets_identical()));

        let listen = &config.listen;
        let certificates = if listen.tls_enabled {
            let store = CertificateStore::open(&listen.cert_path, &listen.key_path)?;
            health.set("tls:certificate", checks::certificate_check(store.not_after()));
            Some(store)
        } else {
            None
        };

        let store = Store::open(&config.data_dir)?;
        let first_start = store.first_started_at().await?;
        tracing::debug!(first_start, "store open");
        let wecom =
            Arc::new(WeCom::new(&config, &store, &metrics).map_err(|e| StartupError::Component(e.to_string()))?);
        let executor =
            Executor::new(config.forward.clone(), Arc::clone(&wecom), config.agent_id, config.upload_dir.clone())
                .map_err(|e| StartupError::Component(e.to_string()))?;
        let journal_wake = Arc::new(Notify::new());
        let outbox_wake = Arc::new(Notify::new());
        let settings = HandlerSettings {
            forward: config.forward.is_some(),
            agent_id: config.agent_id,
            welcome_text: config.welcome_text.clone(),
            first_started_at: first_start,
            replay_history: config.kf_replay_history,
        };
        let (kf_syncer, kf_sync) = KfSyncer::new(store.clone(), Arc::clone(&wecom), Arc::clone(&journal_wake));
        let kf_sync = wecom.kf.is_some().then_some(kf_sync);
        let dispatcher = Dispatcher::new(
            store.clone(),
            settings,
            Arc::clone(&journal_wake),
            Arc::clone(&outbox_wake),
            kf_sync,
            Arc::clone(&metrics),
        );
        let outbox = Outbox::new(store.clone(), Arc::new(executor), Arc::clone(&metrics), outbox_wake);

        let (alerter, mailer) = Alerter::new(config.alert_email.as_ref(), Arc::clone(&metrics))
            .map_err(|e| StartupError::Alerts(e.to_string()))?;
        // Silence longer than three periods (and a margin) means the supervisor is stuck.
        let liveness = Arc::new(Liveness::new(3 * config.supervisor_interval.as_secs() as i64 + 30));
        let supervisor = Supervisor::new(
            Checks::new(
                config.upload_dir.clone(),
                certificates.clone(),
                store.clone(),
                Arc::clone(&wecom),
                Arc::clone(&metrics),
                alerter.clone(),
                config.secrets_identical(),
            ),
            Arc::clone(&health),
            Arc::clone(&liveness),
            alerter.clone(),
            store.clone(),
            Arc::clone(&metrics),
            Timing {
                interval: config.supervisor_interval,
                group_wait: config.alert_group_wait,
                repeat: config.alert_repeat,
            },
        );

        let state = web::Data::new(AppState {
            credentials: CallbackCredentials::from_config(&config),
            metrics: Arc::clone(&metrics),
            health,
            names: Names::new(store.clone(), Arc::clone(&wecom)),
            store,
            journal_wake,
            wecom,
            admin_gate: routes::bearer::BearerGate::admin(config.admin_token.clone()),
            liveness: Arc::clone(&liveness),
            alerter: alerter.clone(),
            version: VERSION,
        });
        let app_state = state.clone();
        let mut server = HttpServer::new(move || {
            App::new()
                .wrap(actix_web::middleware::from_fn(body_deadline))
                .app_data(app_state.clone())
                .configure(routes::configure)
        })
        .client_request_timeout(CLIENT_REQUEST_TIMEOUT)
        .tls_handshake_timeout(TLS_HANDSHAKE_TIMEOUT)
        .keep_alive(KEEP_ALIVE)
        .shutdown_timeout(DRAIN_TIMEOUT.as_secs())
        .disable_signals();

        let main_address = SocketAddr::new(listen.bind_address, listen.https_port);
        let main_listener = bind(main_address, "HTTPS_PORT")?;
        let port = main_listener.local_addr().map_err(StartupError::Server)?.port();
        server = match &certificates {
            Some(store) => server.listen_rustls_0_23(main_listener, store.server_config()?),
            None => server.listen(main_listener),
        }
        .map_err(StartupError::Server)?;

        let mut http_port = None;
        if let Some(plain) = listen.http_port {
            let listener = bind(SocketAddr::new(listen.bind_address, plain), "HTTP_PORT")?;
            http_port = Some(listener.local_addr().map_err(StartupError::Server)?.port());
            server = server.listen(listener).map_err(StartupError::Server)?;
        }

        let server = server.run();
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(metrics_upkeep(Arc::clone(&metrics), state.store.clone(), shutdown.clone()));
        liveness.watch("dispatcher", tasks.spawn(dispatcher.run(shutdown.clone())).abort_handle());
        liveness.watch("outbox", tasks.spawn(outbox.run(shutdown.clone())).abort_handle());
        let retention = retention::run(state.store.clone(), config.retention, metrics, shutdown.clone());
        liveness.watch("retention", tasks.spawn(retention).abort_handle());
        if state.wecom.kf.is_some() {
            liveness.watch("kf-sync", tasks.spawn(kf_syncer.run(shutdown.clone())).abort_handle());
        }
        liveness.watch("supervisor", tasks.spawn(supervisor.run(shutdown.clone())).abort_handle());
        if let Some(mailer) = mailer {
            liveness.watch("mailer", tasks.spawn(mailer.run(shutdown.clone())).abort_handle());
        }
        if let Some(url) = config.heartbeat_url.clone() {
            tasks.spawn(heartbeat(url, shutdown.clone()));
        }
        tracing::info!(
            port,
            http_port,
            tls = certificates.is_some(),
            version = VERSION,
            "wechat-api listening on {}",
            main_address.ip()
        );
        Ok(Self { port, http_port, tls: certificates.is_some(), server, shutdown, tasks, state })
    }

    /// The port of the main (TLS) listener; useful when bound to port 0.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of the optional plain-HTTP listener.
    pub fn http_port(&self) -> Option<u16> {
        self.http_port
    }

    /// Whether the main listener speaks TLS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// Cancelling this token stops the application gracefully, like SIGTERM.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Liveness: heartbeat, watched tasks, fault injection.
    pub fn liveness(&self) -> Arc<Liveness> {
        Arc::clone(&self.state.liveness)
    }

    /// The store, for checks and tests.
    pub fn store(&self) -> Store {
        self.state.store.clone()
    }

    /// The shared health board, for checks run outside the HTTP layer.
    pub fn health(&self) -> Arc<HealthBoard> {
        Arc::clone(&self.state.health)
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

/// How long a dead background task is reported by `/api/health/live` before the
/// watchdog ends the process.
pub const WATCHDOG_GRACE: Duration = Duration::from_secs(60);

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
    let Ok(client) = reqwest::Client::builder().timeout(Duration::from_secs(10)).build() else {
        tracing::error!("HEARTBEAT_URL: cannot build an HTTP client");
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => match client.get(&url).send().await {
                Ok(response) if response.status().is_success() => tracing::debug!("heartbeat sent"),
                Ok(response) => tracing::warn!("HEARTBEAT_URL answered HTTP {}", response.status()),
                Err(error) => tracing::warn!("HEARTBEAT_URL: {}", error.without_url()),
            },
        }
    }
}

fn bind(address: SocketAddr, variable: &'static str) -> Result<TcpListener, StartupError> {
    TcpListener::bind(address).map_err(|source| StartupError::Bind { address, variable, source })
}

/// Bounds the request body in time: once [`BODY_READ_TIMEOUT`] has passed, the
/// body fails with a timeout, so the handler answers and the connection closes.
///
/// It also keeps the body alive until the response is written. actix-http drains
/// a chunked body that a handler dropped unread (a 404, a 413) with no time limit,
/// so a client that then goes quiet would hold its connection forever; a body
/// still held when the response ends makes actix close the connection instead.
async fn body_deadline(
    mut request: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    use actix_web::HttpMessage;
    use futures_util::{FutureExt, StreamExt};
    let payload = request.take_payload();
    if matches!(payload, actix_web::dev::Payload::None) {
        return next.call(request).await.map(|response| response.map_into_boxed_body());
    }
    let body = std::rc::Rc::new(std::cell::RefCell::new(payload));
    let reader = std::rc::Rc::clone(&body);
    let mut timer = Box::pin(tokio::time::sleep(BODY_READ_TIMEOUT));
    let bounded = futures_util::stream::poll_fn(move |cx| match reader.borrow_mut().poll_next_unpin(cx) {
        std::task::Poll::Pending if timer.poll_unpin(cx).is_ready() => {
            let late = std::io::Error::new(std::io::ErrorKind::TimedOut, "request body not received in time");
            std::task::Poll::Ready(Some(Err(actix_web::error::PayloadError::Io(late))))
        }
        polled => polled,
    });
    request.set_payload(actix_web::dev::Payload::Stream { payload: Box::pin(bounded) });
    let response = next.call(request).await?;
    Ok(response.map_body(|_, answer| {
        actix_web::body::BoxBody::new(HoldingBody { answer: answer.boxed(), _request_body: body })
    }))
}

/// A response body that holds the request body until it has been written.
struct HoldingBody {
    answer: actix_web::body::BoxBody,
    /// Never read: only held, so actix sees the request body as still wanted.
    _request_body: std::rc::Rc<std::cell::RefCell<actix_web::dev::Payload>>,
}

impl actix_web::body::MessageBody for HoldingBody {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> actix_web::body::BodySize {
        self.answer.size()
    }

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<actix_web::web::Bytes, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().answer).poll_next(cx)
    }
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

/// Folds histogram samples and copies the store's counters into the metrics.
async fn metrics_upkeep(metrics: Arc<Metrics>, store: Store, shutdown: CancellationToken) {
    let commits = metrics.counter("wechat_api_store_commits_total", &[]);
    let operations = metrics.counter("wechat_api_store_operations_total", &[]);
    let synced = metrics.counter("wechat_api_store_synced_commits_total", &[]);
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
