//! A real SMTP server on 127.0.0.1 that keeps what it receives, and can be
//! stopped and started again on the same port to simulate an outage.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One received email: the raw DATA.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub data: String,
}

impl Received {
    /// The message with quoted-printable soft line breaks and `=3D` undone: what
    /// a person reads (enough for ASCII searches).
    pub(crate) fn text(&self) -> String {
        self.data.replace("=\n", "").replace("=3D", "=")
    }

    pub(crate) fn subject(&self) -> String {
        self.data.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap_or_default().to_owned()
    }
}

pub(crate) struct SmtpSink {
    pub port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    /// The `AUTH` command lines (the only place a password may reach the sink).
    logins: Arc<Mutex<Vec<String>>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl SmtpSink {
    pub(crate) async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind SMTP sink");
        let port = listener.local_addr().expect("addr").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let logins = Arc::new(Mutex::new(Vec::new()));
        let server = Some(tokio::spawn(serve(listener, Arc::clone(&received), Arc::clone(&logins))));
        Self { port, received, logins, server }
    }

    /// Stops accepting (connections are refused) until [`SmtpSink::resume`].
    pub(crate) fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }

    pub(crate) async fn resume(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.expect("rebind SMTP sink");
        self.server = Some(tokio::spawn(serve(listener, Arc::clone(&self.received), Arc::clone(&self.logins))));
    }

    pub(crate) fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    /// Every `AUTH` line a client sent (the sink advertises `AUTH PLAIN LOGIN`).
    pub(crate) fn logins(&self) -> Vec<String> {
        self.logins.lock().expect("lock").clone()
    }

    /// Polls until a mail whose subject contains `needle` arrived, or fails after `within`.
    pub(crate) async fn wait_for(&self, needle: &str, within: Duration) -> Received {
        let deadline = Instant::now() + within;
        loop {
            if let Some(mail) = self.received().into_iter().find(|m| m.subject().contains(needle)) {
                return mail;
            }
            let subjects: Vec<String> = self.received().iter().map(Received::subject).collect();
            assert!(Instant::now() < deadline, "no mail with {needle:?}; got {subjects:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(listener: TcpListener, received: Arc<Mutex<Vec<Received>>>, logins: Arc<Mutex<Vec<String>>>) {
    while let Ok((stream, _)) = listener.accept().await {
        let received = Arc::clone(&received);
        let logins = Arc::clone(&logins);
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            let _ = write.write_all(b"220 sink ESMTP\r\n").await;
            while let Ok(Some(line)) = lines.next_line().await {
                let verb = line.split_whitespace().next().unwrap_or_default().to_ascii_uppercase();
                let reply: &[u8] = match verb.as_str() {
                    "HELO" => b"250 sink\r\n",
                    "EHLO" => b"250-sink\r\n250 AUTH PLAIN LOGIN\r\n",
                    "AUTH" => {
                        logins.lock().expect("lock").push(line.clone());
                        b"235 accepted\r\n"
                    }
                    "DATA" => {
                        let _ = write.write_all(b"354 go ahead\r\n").await;
                        let mut data = String::new();
                        while let Ok(Some(line)) = lines.next_line().await {
                            if line == "." {
                                break;
                            }
                            data.push_str(&line);
                            data.push('\n');
                        }
                        received.lock().expect("lock").push(Received { data });
                        b"250 queued\r\n"
                    }
                    "QUIT" => {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        return;
                    }
                    _ => b"250 ok\r\n",
                };
                let _ = write.write_all(reply).await;
            }
        });
    }
}
