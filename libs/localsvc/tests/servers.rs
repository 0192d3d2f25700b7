//! Real-binary tests: nats-server and postgres as child processes.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use mediamesh_localsvc::{Error, NatsOptions, NatsServer, PgOptions, Postgres, free_port};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn proc_gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// Direct children of `pid` (postgres backends), from /proc.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc") {
        let Some(p) = entry.ok().and_then(|e| e.file_name().to_str()?.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some(idx) = stat.rfind(')') else { continue };
        let mut f = stat[idx + 1..].split_whitespace();
        let state = f.next();
        if f.next().and_then(|v| v.parse::<u32>().ok()) == Some(pid) && state != Some("Z") {
            out.push(p);
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X")
    })
}

async fn port_closed(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).await.is_err()
}

// ---- minimal NATS protocol client -------------------------------------

struct Nats {
    r: BufReader<tokio::io::ReadHalf<TcpStream>>,
    w: tokio::io::WriteHalf<TcpStream>,
    sid: u32,
}

impl Nats {
    async fn connect(port: u16) -> Nats {
        let s = TcpStream::connect(("127.0.0.1", port)).await.expect("connect nats");
        let (r, w) = tokio::io::split(s);
        let mut n = Nats {
            r: BufReader::new(r),
            w,
            sid: 0,
        };
        let info = n.line().await;
        assert!(info.starts_with("INFO "), "{info}");
        n.send(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")
            .await;
        assert_eq!(n.line().await, "PONG");
        n
    }

    async fn send(&mut self, b: &[u8]) {
        self.w.write_all(b).await.expect("write");
    }

    async fn line(&mut self) -> String {
        let mut l = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), self.r.read_line(&mut l))
            .await
            .expect("nats read timeout")
            .expect("read");
        assert!(n > 0, "nats closed");
        l.trim_end().to_string()
    }

    /// Request/reply, returns the reply payload.
    async fn request(&mut self, subject: &str, payload: &str) -> String {
        self.sid += 1;
        let inbox = format!("_INBOX.t.{}", self.sid);
        let msg = format!(
            "SUB {inbox} {sid}\r\nPUB {subject} {inbox} {len}\r\n{payload}\r\n",
            sid = self.sid,
            len = payload.len()
        );
        self.send(msg.as_bytes()).await;
        loop {
            let l = self.line().await;
            if l == "PING" {
                self.send(b"PONG\r\n").await;
            } else if l.starts_with("MSG ") {
                let len: usize = l.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("msg len");
                let mut buf = vec![0; len + 2];
                self.r.read_exact(&mut buf).await.expect("read msg");
                buf.truncate(len);
                return String::from_utf8(buf).expect("utf8");
            } else {
                assert!(!l.starts_with("-ERR"), "{l}");
            }
        }
    }
}

#[tokio::test]
async fn nats_kill_restart_keeps_jetstream_data() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = Instant::now();
    let mut nats = NatsServer::start(NatsOptions::new(tmp.path()))
        .await
        .expect("start nats");
    eprintln!("nats start: {:?}", t.elapsed());
    let port = nats.port();
    assert_eq!(nats.url(), format!("nats://127.0.0.1:{port}"));
    assert!(nats.is_running());

    let mut c = Nats::connect(port).await;
    let r = c
        .request(
            "$JS.API.STREAM.CREATE.T",
            r#"{"name":"T","subjects":["t.>"],"storage":"file"}"#,
        )
        .await;
    assert!(r.contains("\"config\"") && !r.contains("\"error\""), "{r}");
    let ack = c.request("t.one", "hello").await;
    assert!(ack.contains("\"seq\":1"), "{ack}");
    drop(c);

    let pid = nats.pid().expect("pid");
    nats.kill().expect("kill");
    assert!(!nats.is_running());
    assert!(proc_gone(pid), "killed nats still in /proc");
    assert!(port_closed(port).await, "port still open after kill");

    let t = Instant::now();
    nats.restart().await.expect("restart");
    eprintln!("nats restart: {:?}", t.elapsed());
    assert_eq!(nats.port(), port);
    let mut c = Nats::connect(port).await;
    let info = c.request("$JS.API.STREAM.INFO.T", "").await;
    assert!(info.contains("\"messages\":1"), "{info}");
    drop(c);

    nats.stop().await.expect("stop");
    assert!(!nats.is_running());
    assert!(port_closed(port).await);
    nats.restart().await.expect("restart after stop");
    let pid = nats.pid().expect("pid");
    drop(nats);
    assert!(proc_gone(pid), "drop left nats behind");
    assert!(port_closed(port).await);
}

#[tokio::test]
async fn nats_reports_port_in_use() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let holder = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
    let port = holder.local_addr().expect("addr").port();
    let mut opts = NatsOptions::new(tmp.path());
    opts.port = Some(port);
    match NatsServer::start(opts).await {
        Err(Error::PortInUse { port: p, .. }) => assert_eq!(p, port),
        other => panic!("expected port in use, got {other:?}"),
    }
}

#[tokio::test]
async fn missing_binaries_are_reported() {
    let err = NatsServer::find_binary(Some(Path::new("/nonexistent/nats-server"))).expect_err("missing");
    assert!(matches!(err, Error::NotFound(_)), "{err}");
    let err = Postgres::find_bin_dir(Some(Path::new("/nonexistent"))).expect_err("missing");
    assert!(matches!(err, Error::NotFound(_)), "{err}");
    assert!(NatsServer::find_binary(None).is_ok());
    let bin = Postgres::find_bin_dir(None).expect("pg bin dir");
    assert!(bin.join("initdb").exists());
}

#[test]
fn free_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
    let ports: Vec<u16> = (0..64).map(|_| free_port().expect("free port")).collect();
    let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
    assert_eq!(distinct.len(), ports.len(), "a port was handed out twice: {ports:?}");
    for port in ports {
        assert!((20_000..32_000).contains(&port), "{port} is outside the reserved range");
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("a handed-out port binds");
        // The reservation is a lock another process (or another open of the file) cannot take.
        let lock = std::env::temp_dir().join("mediamesh-ports").join(port.to_string());
        let other = std::fs::File::open(&lock).expect("lock file exists");
        assert!(other.try_lock().is_err(), "port {port} is not reserved");
    }
}

// ---- minimal PostgreSQL protocol client (trust auth, simple query) -----

struct Pg {
    s: TcpStream,
}

impl Pg {
    async fn connect(port: u16, db: &str) -> Pg {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.expect("connect pg");
        let mut body = Vec::new();
        body.extend_from_slice(&196_608u32.to_be_bytes());
        for kv in ["user", "postgres", "database", db] {
            body.extend_from_slice(kv.as_bytes());
            body.push(0);
        }
        body.push(0);
        let len = u32::try_from(body.len() + 4).expect("len");
        s.write_all(&len.to_be_bytes()).await.expect("write");
        s.write_all(&body).await.expect("write");
        let mut pg = Pg { s };
        pg.until_ready().await.expect("startup");
        pg
    }

    async fn msg(&mut self) -> (u8, Vec<u8>) {
        let fut = async {
            let tag = self.s.read_u8().await?;
            let len = self.s.read_u32().await? as usize;
            let mut body = vec![0; len - 4];
            self.s.read_exact(&mut body).await?;
            std::io::Result::Ok((tag, body))
        };
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .expect("pg read timeout")
            .expect("pg read")
    }

    /// Reads until ReadyForQuery; returns data rows (text) or the error.
    async fn until_ready(&mut self) -> Result<Vec<Vec<String>>, String> {
        let mut rows = Vec::new();
        let mut err = None;
        loop {
            let (tag, body) = self.msg().await;
            match tag {
                b'R' => assert_eq!(&body[..4], &[0, 0, 0, 0], "unexpected auth request"),
                b'E' => err = Some(String::from_utf8_lossy(&body).into_owned()),
                b'D' => {
                    let n = u16::from_be_bytes([body[0], body[1]]);
                    let mut pos = 2;
                    let mut row = Vec::new();
                    for _ in 0..n {
                        let l = i32::from_be_bytes(body[pos..pos + 4].try_into().expect("len"));
                        pos += 4;
                        if l < 0 {
                            row.push(String::new());
                        } else {
                            let l = l as usize;
                            row.push(String::from_utf8_lossy(&body[pos..pos + l]).into_owned());
                            pos += l;
                        }
                    }
                    rows.push(row);
                }
                b'Z' => return err.map_or(Ok(rows), Err),
                _ => {}
            }
        }
    }

    async fn query(&mut self, sql: &str) -> Vec<Vec<String>> {
        let len = u32::try_from(sql.len() + 5).expect("len");
        let mut m = vec![b'Q'];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(sql.as_bytes());
        m.push(0);
        self.s.write_all(&m).await.expect("write");
        self.until_ready().await.expect("query")
    }
}

#[tokio::test]
async fn postgres_kill_stop_restart_and_drop() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = Instant::now();
    let mut pg = Postgres::start_fast(PgOptions::new(tmp.path().join("pg")))
        .await
        .expect("start postgres");
    eprintln!("postgres start_fast: {:?}", t.elapsed());
    let port = pg.port();
    assert_eq!(pg.url("app"), format!("postgres://postgres@127.0.0.1:{port}/app"));
    assert!(pg.is_running());
    assert!(pg.data_dir().join("PG_VERSION").exists());

    let mut c = Pg::connect(port, "postgres").await;
    c.query("CREATE TABLE t (v int); INSERT INTO t VALUES (1)").await;
    assert_eq!(c.query("SELECT 40 + 2").await, vec![vec!["42".to_string()]]);
    drop(c);

    pg.create_database("app").await.expect("createdb");
    let mut c = Pg::connect(port, "app").await;
    assert_eq!(
        c.query("SELECT current_database()").await,
        vec![vec!["app".to_string()]]
    );

    // Crash with a client connected: backends must go too.
    let pid = pg.pid().expect("pid");
    let backends = children(pid);
    assert!(!backends.is_empty(), "no backends found");
    pg.kill().expect("kill");
    assert!(!pg.is_running());
    assert!(proc_gone(pid), "postmaster still in /proc");
    assert!(backends.iter().all(|&b| !alive(b)), "backends survived kill");
    // Reaped too, no zombies left even where init does not reap.
    assert!(backends.iter().all(|&b| proc_gone(b)), "backend zombies left");
    assert!(port_closed(port).await, "port open after kill");
    drop(c);

    let t = Instant::now();
    pg.restart().await.expect("restart after kill");
    eprintln!("postgres restart after kill: {:?}", t.elapsed());
    assert_eq!(pg.port(), port);
    let mut c = Pg::connect(port, "postgres").await;
    assert_eq!(c.query("SELECT count(*) FROM t").await, vec![vec!["1".to_string()]]);
    // Committed right before a kill survives (process crash, not OS crash).
    c.query("INSERT INTO t VALUES (2)").await;
    pg.kill().expect("kill again");
    drop(c);
    pg.restart().await.expect("restart after second kill");
    let mut c = Pg::connect(port, "postgres").await;
    assert_eq!(c.query("SELECT count(*) FROM t").await, vec![vec!["2".to_string()]]);
    drop(c);

    let t = Instant::now();
    pg.stop().await.expect("stop");
    eprintln!("postgres stop: {:?}", t.elapsed());
    assert!(!pg.is_running());
    assert!(port_closed(port).await, "port open after stop");
    pg.restart().await.expect("restart after stop");
    let mut c = Pg::connect(port, "app").await;
    c.query("SELECT 1").await;

    let pid = pg.pid().expect("pid");
    let backends = children(pid);
    drop(pg);
    assert!(proc_gone(pid), "drop left postmaster behind");
    assert!(backends.iter().all(|&b| proc_gone(b)), "drop left backends");
    assert!(port_closed(port).await, "port open after drop");
}

#[tokio::test]
async fn postgres_plain_initdb_and_reuse_of_data_dir() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = free_port().expect("port");
    let opts = PgOptions {
        bin_dir: None,
        dir: tmp.path().to_path_buf(),
        port: Some(port),
        fsync: true,
    };
    let t = Instant::now();
    let mut pg = Postgres::start(opts.clone()).await.expect("start");
    eprintln!("postgres start with initdb: {:?}", t.elapsed());
    assert_eq!(pg.port(), port);
    let mut c = Pg::connect(port, "postgres").await;
    c.query("CREATE TABLE keep (v text); INSERT INTO keep VALUES ('x')")
        .await;
    drop(c);
    pg.stop().await.expect("stop");
    drop(pg);

    // A new handle on the same folder reuses the data dir (no initdb).
    let t = Instant::now();
    let pg = Postgres::start(opts).await.expect("start again");
    eprintln!("postgres start on existing data: {:?}", t.elapsed());
    let mut c = Pg::connect(port, "postgres").await;
    assert_eq!(c.query("SELECT v FROM keep").await, vec![vec!["x".to_string()]]);
    let log = std::fs::read_to_string(pg.log_path()).expect("log");
    assert_eq!(log.matches("database system is ready to accept connections").count(), 2);
}

/// SysV segments created by `pid` (from /proc/sysvipc/shm).
fn sysv_segments_of(pid: u32) -> usize {
    std::fs::read_to_string("/proc/sysvipc/shm")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().nth(4) == Some(&pid.to_string()))
        .count()
}

#[tokio::test]
async fn postgres_kill_then_drop_leaves_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut pg = Postgres::start_fast(PgOptions::new(tmp.path())).await.expect("start");
    let pid = pg.pid().expect("pid");
    assert_eq!(sysv_segments_of(pid), 1);
    let _c = Pg::connect(pg.port(), "postgres").await;
    pg.kill().expect("kill");
    assert!(proc_gone(pid));
    drop(pg);
    assert_eq!(sysv_segments_of(pid), 0, "shared memory segment left");
}
