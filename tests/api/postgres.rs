//! A real, throwaway PostgreSQL for the tests, and the tests of what only the
//! PostgreSQL store does (migrations shared by replicas, group commit, `sslmode`,
//! outages). What both stores must do alike is in `store_conformance`.
//!
//! The cluster: `initdb` and `pg_ctl` (Debian's `postgresql` package, found in
//! `/usr/lib/postgresql/*/bin` or on `PATH`) run as the `postgres` user when the
//! tests run as root (initdb refuses root), in a temporary directory, on a free
//! loopback port, `fsync` on. One cluster serves every test of the process, each
//! test in a database of its own; a reaper process stops it by the PID in
//! `postmaster.pid` and removes the directory once the test process has exited
//! (statics are never dropped). A cluster of one test's own ([`Cluster::start`])
//! is stopped by its `Drop`. Without PostgreSQL the tests are skipped with a
//! notice, except under `CI`, where that is a failure.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use wechat_api::testing::channels::ChannelName;
use wechat_api::testing::store::{EntryKind, NewEntry, Recorded};
use wechat_api::testing::store::{Store, StoreError, DEFAULT_LEASE};

/// The cluster every test of this process shares (`None`: PostgreSQL is not installed).
static SHARED: OnceLock<Option<Cluster>> = OnceLock::new();

/// Databases created so far in the shared cluster.
static DATABASES: AtomicUsize = AtomicUsize::new(0);

/// A running PostgreSQL cluster in a temporary directory.
pub(crate) struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    /// Whether `drop` stops it (the shared cluster is left to its reaper).
    owned: bool,
    /// Whether it serves TLS (a self-signed certificate for 127.0.0.1).
    tls: bool,
    /// The shared cluster's reaper: it outlives this process, never waited for.
    _reaper: Option<std::process::Child>,
}

/// The URL of a new, empty database in the shared cluster, or `None` (after a
/// notice) when PostgreSQL is not installed and this is not CI.
pub(crate) async fn fresh_database() -> Option<String> {
    let cluster = SHARED.get_or_init(|| Cluster::launch(false, false)).as_ref()?;
    let name = format!("t{}", DATABASES.fetch_add(1, Ordering::Relaxed));
    cluster.create_database(&name).await;
    Some(cluster.url(&name))
}

/// Where `initdb` and `pg_ctl` are: the newest Debian version, else `PATH`.
fn binaries() -> Option<PathBuf> {
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    debian.sort_by_key(|bin| {
        bin.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok())
    });
    debian.pop().or_else(|| {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
    })
}

/// Whether this process is root (then PostgreSQL's tools run as `postgres`).
fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `program` with `args`, as the `postgres` user when we are root.
fn as_postgres(program: &Path, args: &[&str]) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program).args(args);
        command
    } else {
        let mut command = Command::new(program);
        command.args(args);
        command
    }
}

fn run(mut command: Command, what: &str) {
    let output = command.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Makes `dir` the `postgres` user's, when we are root (its tools run as that user).
fn give_to_postgres(dir: &Path) {
    if is_root() {
        let mut chown = Command::new("chown");
        chown.args(["-R", "postgres:postgres"]).arg(dir);
        run(chown, "chown of the cluster directory");
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port").port()
}

impl Cluster {
    /// A cluster of the calling test's own, stopped and removed on drop.
    pub(crate) fn start() -> Option<Self> {
        Self::launch(true, false)
    }

    /// Like [`Cluster::start`], serving TLS with a self-signed certificate.
    pub(crate) fn start_with_tls() -> Option<Self> {
        Self::launch(true, true)
    }

    fn launch(owned: bool, tls: bool) -> Option<Self> {
        let Some(bin) = binaries() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "PostgreSQL is not installed (initdb not in /usr/lib/postgresql/*/bin or PATH); CI must install `postgresql`"
            );
            eprintln!("NOTICE: PostgreSQL is not installed: the PostgreSQL store tests are skipped");
            return None;
        };
        let dir = tempfile::Builder::new().prefix("wechat-api-pg-").tempdir().expect("a temporary directory").keep();
        let data = dir.to_str().expect("a UTF-8 temporary path").to_owned();
        give_to_postgres(&dir);
        run(as_postgres(&bin.join("initdb"), &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"]), "initdb");
        if tls {
            let (_, key, _) = super::helpers::write_certificate(&dir, 30);
            // PostgreSQL refuses a key that others may read.
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod key");
            give_to_postgres(&dir);
        }
        let mut cluster = Self { dir, bin, port: free_port(), owned, tls, _reaper: None };
        if !owned {
            cluster._reaper = Some(cluster.spawn_reaper());
        }
        cluster.resume();
        Some(cluster)
    }

    /// Starts the server (again) on its port, waiting until it accepts connections.
    pub(crate) fn resume(&self) {
        let data = self.dir.to_str().expect("a UTF-8 temporary path");
        let mut options =
            format!("-p {} -k {data} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=400", self.port);
        if self.tls {
            options.push_str(" -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key");
        }
        let log = format!("{data}/log");
        run(
            as_postgres(&self.bin.join("pg_ctl"), &["-D", data, "-o", &options, "-l", &log, "start", "-w", "-t", "60"]),
            "pg_ctl start",
        );
    }

    /// The URL of database `name`.
    pub(crate) fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}?sslmode=disable", self.port)
    }

    /// Creates database `name`.
    pub(crate) async fn create_database(&self, name: &str) {
        let (client, connection) = tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
            .await
            .expect("connects to the cluster");
        let connection = tokio::spawn(connection);
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("creates a database");
        drop(client);
        let _ = connection.await;
    }

    /// The postmaster's PID, from `postmaster.pid`; `None` when it is not running.
    fn pid(&self) -> Option<rustix::process::Pid> {
        let file = std::fs::read_to_string(self.dir.join("postmaster.pid")).ok()?;
        let pid = rustix::process::Pid::from_raw(file.lines().next()?.trim().parse().ok()?)?;
        rustix::process::test_kill_process(pid).is_ok().then_some(pid)
    }

    /// Stops the server by its PID (a fast shutdown: clients are disconnected),
    /// waiting until it has shut down (it removes `postmaster.pid` last; the
    /// process itself may linger as a zombie until it is reaped).
    pub(crate) fn stop(&self) {
        let Some(pid) = self.pid() else { return };
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.dir.join("postmaster.pid").exists() {
            if Instant::now() > deadline {
                // Immediate shutdown: no checkpoint, as after a crash.
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::QUIT);
                break;
            }
            // Polling its shutdown, within the deadline.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The postmaster and every process under it (backends, writers, the
    /// checkpointer), from `/proc`.
    fn processes(&self) -> Vec<rustix::process::Pid> {
        let Some(postmaster) = self.pid() else { return Vec::new() };
        let parents: Vec<(i32, i32)> = std::fs::read_dir("/proc")
            .expect("/proc")
            .flatten()
            .filter_map(|entry| {
                let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
                // `pid (comm) state ppid …`: comm may hold spaces, so read after the last ')'.
                let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
                Some((pid, ppid))
            })
            .collect();
        let mut found = vec![postmaster.as_raw_nonzero().get()];
        let mut i = 0;
        while i < found.len() {
            let parent = found[i];
            found.extend(parents.iter().filter(|(_, ppid)| *ppid == parent).map(|(pid, _)| *pid));
            i += 1;
        }
        found.into_iter().filter_map(rustix::process::Pid::from_raw).collect()
    }

    /// SIGSTOP to the server and all its processes: a stalled database (a storage
    /// hiccup, a long checkpoint) whose kernel still accepts and acknowledges.
    pub(crate) fn freeze(&self) {
        let processes = self.processes();
        assert!(!processes.is_empty(), "the server is running");
        for pid in processes {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::STOP);
        }
    }

    /// SIGCONT to everything [`Cluster::freeze`] stopped.
    pub(crate) fn thaw(&self) {
        for pid in self.processes() {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::CONT);
        }
    }

    /// A detached process that waits for this test process to exit, then stops the
    /// server by its PID and removes the directory.
    fn spawn_reaper(&self) -> std::process::Child {
        let script = r#"
            while kill -0 "$1" 2>/dev/null; do sleep 0.2; done
            pid=$(head -n 1 "$2/postmaster.pid" 2>/dev/null)
            if [ -n "$pid" ]; then
                kill -TERM "$pid" 2>/dev/null
                n=0
                while [ -f "$2/postmaster.pid" ] && [ $n -lt 150 ]; do sleep 0.2; n=$((n+1)); done
                kill -QUIT "$pid" 2>/dev/null
            fi
            rm -rf "$2"
        "#;
        Command::new("sh")
            .args(["-c", script, "reaper"])
            .arg(std::process::id().to_string())
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starts the cluster's reaper")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.owned {
            // A test that failed while the server was frozen must not leave it so.
            self.thaw();
            self.stop();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn entry(key: &str) -> NewEntry {
    NewEntry {
        dedup_key: key.to_owned(),
        channel: ChannelName::app(),
        kind: EntryKind::Callback,
        sender: Some("zhangsan".into()),
        payload: format!("<xml>{key}</xml>"),
        parsed: None,
    }
}

async fn connect(url: &str) -> Store {
    Store::connect(url, 8, DEFAULT_LEASE).await.expect("connects")
}

async fn sql(url: &str, statement: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connects");
    let connection = tokio::spawn(connection);
    client.batch_execute(statement).await.expect("runs");
    drop(client);
    let _ = connection.await;
}

async fn count(url: &str, query: &str) -> i64 {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connects");
    let connection = tokio::spawn(connection);
    let value = client.query_one(query, &[]).await.expect("queries").get(0);
    drop(client);
    let _ = connection.await;
    value
}

/// The PostgreSQL schema this build writes: 1, 2 for replies (sends, kf
/// conversations), 3 for the index of queued sends (SEND_QUEUE_MAX), 4 for the
/// send API's request fingerprints, 5 for kf cursors keyed by channel, 6 for the
/// egress IPs, 7 for AI bot streams, 8 for channels in names and kf rows, 9 for
/// `journal_pending`: what this build migrates to (each migration moves it).
const SCHEMA_VERSION: i64 = wechat_api::testing::store::POSTGRES_SCHEMA_VERSION;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_once() {
    let Some(url) = fresh_database().await else { return };
    let starts = (0..6).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { Store::connect(&url, 2, DEFAULT_LEASE).await.map(drop) })
    });
    for start in futures_util::future::join_all(starts).await {
        start.expect("task").expect("every replica starts");
    }
    assert_eq!(count(&url, "SELECT count(*) FROM schema_version").await, 1);
    assert_eq!(count(&url, "SELECT max(version) FROM schema_version").await, SCHEMA_VERSION);
}

#[tokio::test]
async fn a_replica_refuses_a_newer_schema() {
    let Some(url) = fresh_database().await else { return };
    drop(connect(&url).await);
    sql(&url, "UPDATE schema_version SET version = 99").await;
    let refused = Store::connect(&url, 2, DEFAULT_LEASE).await;
    let known = SCHEMA_VERSION;
    assert!(matches!(refused, Err(StoreError::TooNew { found: 99, known: k }) if k == known && k > 1), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_journal_writes_share_commits() {
    let Some(url) = fresh_database().await else { return };
    let store = connect(&url).await;
    let before = store.stats().commits.load(Ordering::Relaxed);
    let writes = (0..400).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { store.journal(entry(&format!("k{i}"))).await })
    });
    for write in futures_util::future::join_all(writes).await {
        assert!(matches!(write.expect("task").expect("journal"), Recorded::New(_)));
    }
    let commits = store.stats().commits.load(Ordering::Relaxed) - before;
    assert!(commits < 400, "400 writes took {commits} commits: no grouping");
    assert_eq!(store.unhandled().await.expect("unhandled"), 400);
}

/// A replica's journal writer inserts its entries claimed for it: its
/// dispatcher takes them from memory without claiming (rewriting) the rows
/// again, and another replica gets them only once that claim has run out (their
/// replica died with them), as with any claimed batch.
#[tokio::test]
async fn a_replicas_own_entries_are_claimed_by_their_insert_until_the_claim_runs_out() {
    let Some(url) = fresh_database().await else { return };
    let lease = Duration::from_secs(1);
    let first = Store::connect(&url, 4, lease).await.expect("connects");
    let second = Store::connect(&url, 4, lease).await.expect("connects");
    assert!(matches!(first.journal(entry("mine")).await.expect("journal"), Recorded::New(_)));
    let query = "SELECT count(*) FROM journal JOIN journal_pending USING (id)
                 WHERE dedup_key = 'mine' AND claimed_until > now()";
    assert_eq!(count(&url, query).await, 1, "claimed by its insert");
    assert!(second.claim_entries(10).await.expect("claim").is_empty(), "not another replica's");
    let mine = first.claim_entries(10).await.expect("claim");
    assert_eq!(mine.iter().map(|e| e.dedup_key.as_str()).collect::<Vec<_>>(), ["mine"]);
    assert_eq!(mine[0].payload, "<xml>mine</xml>");
    // The first replica dies before completing it: once the claim runs out, the
    // second takes it from the journal.
    let deadline = Instant::now() + Duration::from_secs(10);
    let again = loop {
        let claimed = second.claim_entries(10).await.expect("claim");
        if !claimed.is_empty() {
            break claimed;
        }
        assert!(Instant::now() < deadline, "the entry was never claimed again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((again[0].id, &again[0].payload), (mine[0].id, &mine[0].payload));
    second.complete_entries(vec![(again[0].id, Vec::new())]).await.expect("complete");
    assert_eq!(second.unhandled().await.expect("unhandled"), 0);
}

/// A journal row is written once: claiming and handling its entry touch only
/// its narrow `journal_pending` row, never the ~1 KB row itself (no new row
/// version, so no payload rewritten into the WAL per callback).
#[tokio::test]
async fn handling_an_entry_never_rewrites_its_journal_row() {
    let Some(url) = fresh_database().await else { return };
    let (first, second) = (connect(&url).await, connect(&url).await);
    // One claimed by its insert, one taken from the journal by a claim.
    assert!(matches!(first.journal(entry("owned")).await.expect("journal"), Recorded::New(_)));
    let kept = |key: &str| format!("SELECT xmin::text::bigint FROM journal WHERE dedup_key = '{key}'");
    let written = count(&url, &kept("owned")).await;
    let mine = first.claim_entries(10).await.expect("claim");
    first.complete_entries(mine.iter().map(|e| (e.id, Vec::new())).collect()).await.expect("complete");
    // A kf page is journaled unclaimed: the other replica claims it.
    let account = crate::store_conformance::kf_account("wk");
    let mut sync = second.claim_kf_account(account).await.expect("claim").expect("free");
    assert_eq!(second.kf_store_page(&mut sync, vec![entry("claimed")], "c1".into()).await.expect("stored"), 1);
    let claimed_written = count(&url, &kept("claimed")).await;
    let theirs = second.claim_entries(10).await.expect("claim");
    assert_eq!(theirs.iter().map(|e| e.dedup_key.as_str()).collect::<Vec<_>>(), ["claimed"]);
    second.complete_entries(theirs.iter().map(|e| (e.id, Vec::new())).collect()).await.expect("complete");
    assert_eq!(second.unhandled().await.expect("unhandled"), 0, "both handled");
    assert_eq!(count(&url, &kept("owned")).await, written, "the owned entry's row is as inserted");
    assert_eq!(count(&url, &kept("claimed")).await, claimed_written, "the claimed entry's row is as inserted");
}

#[tokio::test]
async fn one_bad_entry_in_a_group_fails_alone() {
    let Some(url) = fresh_database().await else { return };
    let store = connect(&url).await;
    // PostgreSQL cannot store a NUL in text: that entry alone is refused.
    let mut bad = entry("bad");
    bad.payload = "a\0b".into();
    let writes: Vec<_> = [bad, entry("good-1"), entry("good-2")]
        .into_iter()
        .map(|e| {
            let store = store.clone();
            tokio::spawn(async move { store.journal(e).await })
        })
        .collect();
    let results: Vec<_> = futures_util::future::join_all(writes).await.into_iter().map(|r| r.expect("task")).collect();
    assert!(results[0].is_err(), "{:?}", results[0]);
    assert!(results[1..].iter().all(|r| matches!(r, Ok(Recorded::New(_)))), "{results:?}");
    assert!(store.contains("good-1".into()).await.expect("query"));
}

#[tokio::test]
async fn sslmode_prefer_falls_back_to_plain_and_require_insists() {
    let Some(url) = fresh_database().await else { return };
    let prefer = url.replace("sslmode=disable", "sslmode=prefer");
    let store = connect(&prefer).await;
    assert!(matches!(store.journal(entry("over-plain")).await.expect("journal"), Recorded::New(_)));
    // The test cluster has no TLS: require must not silently go plain.
    let require = url.replace("sslmode=disable", "sslmode=require");
    assert!(Store::connect(&require, 1, DEFAULT_LEASE).await.is_err());
}

#[tokio::test]
async fn sslmode_require_and_prefer_speak_tls_and_verify_full_checks_the_chain() {
    let Some(cluster) = Cluster::start_with_tls() else { return };
    cluster.create_database("tls").await;
    let url = cluster.url("tls");
    for mode in ["require", "prefer"] {
        let store = connect(&url.replace("sslmode=disable", &format!("sslmode={mode}"))).await;
        let key = format!("over-tls-{mode}");
        assert!(matches!(store.journal(entry(&key)).await.expect("journal"), Recorded::New(_)), "{mode}");
    }
    // Self-signed: no public root vouches for it.
    let verify = url.replace("sslmode=disable", "sslmode=verify-full");
    let refused = Store::connect(&verify, 1, DEFAULT_LEASE).await.expect_err("an unknown issuer is refused");
    assert!(refused.to_string().to_lowercase().contains("certificate"), "{refused}");
}

#[tokio::test]
async fn errors_never_show_the_password() {
    let port = free_port();
    let url = format!("postgres://app:hunter2-secret@127.0.0.1:{port}/db?sslmode=disable");
    let error = Store::connect(&url, 1, DEFAULT_LEASE).await.expect_err("nothing listens there");
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    let error = Store::connect("mysql://app:hunter2-secret@db/x", 1, DEFAULT_LEASE).await.expect_err("bad scheme");
    assert!(!format!("{error} {error:?}").contains("hunter2"));
    assert!(error.to_string().contains("DATABASE_URL"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_an_error_and_heals_without_a_new_store() {
    let Some(cluster) = Cluster::start() else { return };
    cluster.create_database("outage").await;
    let store = connect(&cluster.url("outage")).await;
    assert!(matches!(store.journal(entry("before")).await.expect("journal"), Recorded::New(_)));

    cluster.stop();
    assert!(store.journal(entry("during")).await.is_err(), "no commit, no success");

    cluster.resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.journal(entry("during")).await {
            Ok(recorded) => {
                assert!(matches!(recorded, Recorded::New(_)), "it was never stored: {recorded:?}");
                break;
            }
            Err(error) => assert!(Instant::now() < deadline, "not healed: {error}"),
        }
        // Polling the recovery, within the deadline.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(store.contains("before".into()).await.expect("query"));
    assert_eq!(store.unhandled().await.expect("unhandled"), 2);
}

/// Distinct journal writes by `callers` concurrent tasks for `run`: (writes/s, p99).
async fn journal_rate(store: &Store, round: &str, callers: usize, run: Duration) -> (f64, Duration) {
    let start = Instant::now();
    let tasks = (0..callers).map(|c| {
        let (store, round) = (store.clone(), round.to_owned());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0;
            while start.elapsed() < run {
                let began = Instant::now();
                let recorded = store.journal(entry(&format!("{round}-{c}-{i}"))).await.expect("journal");
                assert!(matches!(recorded, Recorded::New(_)));
                latencies.push(began.elapsed());
                i += 1;
            }
            latencies
        })
    });
    let mut latencies: Vec<Duration> =
        futures_util::future::join_all(tasks).await.into_iter().flat_map(|t| t.expect("task")).collect();
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    (latencies.len() as f64 / elapsed, p99)
}

/// The goal is at least half the SQLite rate (issue 12); this guards, loosely so
/// that a noisy machine does not fail it, against losing group commit (single-row
/// commits here are ~3k/s, a twentieth of SQLite's grouped rate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journaling_at_64_callers_keeps_up_with_sqlite() {
    let Some(url) = fresh_database().await else { return };
    let dir = tempfile::tempdir().expect("dir");
    let sqlite = Store::open(dir.path()).expect("opens");
    let postgres = connect(&url).await;
    let run = Duration::from_secs(2);
    let (sqlite_rate, sqlite_p99) = journal_rate(&sqlite, "s", 64, run).await;
    let (commits, rows) =
        (postgres.stats().commits.load(Ordering::Relaxed), postgres.stats().operations.load(Ordering::Relaxed));
    let (postgres_rate, postgres_p99) = journal_rate(&postgres, "p", 64, run).await;
    let commits = postgres.stats().commits.load(Ordering::Relaxed) - commits;
    let rows = postgres.stats().operations.load(Ordering::Relaxed) - rows;
    eprintln!(
        "journal, 64 callers: SQLite {sqlite_rate:.0}/s (p99 {sqlite_p99:?}), PostgreSQL {postgres_rate:.0}/s \
         (p99 {postgres_p99:?}, {:.0} commits/s, {:.1} rows per commit): {:.2}x",
        commits as f64 / run.as_secs_f64(),
        rows as f64 / commits.max(1) as f64,
        postgres_rate / sqlite_rate
    );
    assert!(postgres_rate >= 0.25 * sqlite_rate, "PostgreSQL {postgres_rate:.0}/s vs SQLite {sqlite_rate:.0}/s");
}
