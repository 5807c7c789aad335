//! `puhui bench http`: load a running `puhui serve` over HTTP and report throughput and latency.
//!
//! It creates its own tenant (with the admin token) and accounts, then runs `--connections` loops
//! for `--duration` seconds, each posting one transfer (`--mode single`) or a batch (`--mode batch`)
//! per request: back to back (a closed loop, the server's saturation) or, with `--rate`, on a
//! schedule (an open loop). The load goes through [`Conn`], a minimal keep-alive HTTP/1.1 client on
//! one thread, so that the client takes little of cores it shares with the server. Bounded: it
//! stops by itself, and it only talks to the URL it is given.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use rand::{Rng, SeedableRng};

/// One transfer or a batch per request.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Mode {
    /// `POST /v1/transfers`.
    Single,
    /// `POST /v1/transfers/batch`.
    Batch,
}

/// Flags of `puhui bench http`.
#[derive(Args, Debug)]
pub struct HttpArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Concurrent connections (each one request at a time).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds of load (after setup), at most 600.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// One transfer per request, or batches.
    #[arg(long, value_enum, default_value_t = Mode::Single)]
    mode: Mode,
    /// Transfers per batch request.
    #[arg(long, default_value_t = 8_189)]
    batch: usize,
    /// Accounts to create and pick from.
    #[arg(long, default_value_t = 1_000)]
    accounts: usize,
    /// Admin token (default: $PUHUI_ADMIN_TOKEN, else DATA_DIR/admin.token with --data-dir).
    #[arg(long)]
    admin_token: Option<String>,
    /// The server's data directory, to read its admin token.
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Requests per second in all, spread evenly over the connections: an open loop, in which a
    /// request held up by a slow answer on its connection is timed from when it was due (no
    /// coordinated omission). Without it, a closed loop: each connection sends its next request as
    /// soon as the last is answered (the server's saturation).
    #[arg(long)]
    rate: Option<std::num::NonZeroU64>,
    /// Every transfer carries a `risk_context` (device, IP, channel, KYC tier), so a server with
    /// risk control decides each one inline before posting it.
    #[arg(long)]
    risk_context: bool,
}

/// Most requests per second `--rate` may ask for.
const RATE_MAX: u64 = 10_000_000;

struct Stats {
    latencies_us: Vec<u32>,
    transfers: u64,
    /// Requests risk control declined (422 `risk_declined`): an answer, not an error.
    declined: u64,
    errors: u64,
}

/// Runs the HTTP benchmark.
pub fn run(args: HttpArgs) -> anyhow::Result<ExitCode> {
    if args.connections == 0 || args.connections > 1_024 {
        bail!("--connections must be 1-1024");
    }
    if args.duration == 0 || args.duration > 600 {
        bail!("--duration must be 1-600 seconds");
    }
    if args.rate.is_some_and(|r| r.get() > RATE_MAX) {
        bail!("--rate must be 1-{RATE_MAX} requests per second");
    }
    if args.batch == 0 || args.batch > puhui_ledger::BATCH_EVENTS_MAX {
        bail!("--batch must be 1-{}", puhui_ledger::BATCH_EVENTS_MAX);
    }
    let admin = match (&args.admin_token, std::env::var("PUHUI_ADMIN_TOKEN").ok(), &args.data_dir) {
        (Some(t), _, _) => t.clone(),
        (None, Some(t), _) if !t.is_empty() => t,
        (None, _, Some(dir)) => std::fs::read_to_string(dir.join("admin.token"))
            .with_context(|| format!("reading {}/admin.token", dir.display()))?
            .trim()
            .to_string(),
        _ => bail!("give --admin-token, PUHUI_ADMIN_TOKEN or --data-dir"),
    };
    // One client thread (as `wrk -t1`): on a machine shared with the server, the client takes as
    // little of the cores as it can.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(load(args, admin))
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: String,
) -> anyhow::Result<(u16, String)> {
    let response = client
        .post(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

async fn load(args: HttpArgs, admin: String) -> anyhow::Result<ExitCode> {
    let base = args.url.trim_end_matches('/').to_string();
    let target = Target::parse(&base)?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.connections).build()?;
    let (status, body) =
        post(&client, &format!("{base}/v1/tenants"), &admin, r#"{"name":"bench http"}"#.into()).await?;
    if status != 201 {
        bail!("creating the bench tenant: HTTP {status}: {body}");
    }
    let tenant: serde_json::Value = serde_json::from_str(&body)?;
    let key = tenant["api_key"].as_str().context("api_key")?.to_string();

    // Accounts, created concurrently.
    let started = Instant::now();
    let mut setup = tokio::task::JoinSet::new();
    for worker in 0..args.connections.min(args.accounts) {
        let (client, base, key, accounts, step) =
            (client.clone(), base.clone(), key.clone(), args.accounts, args.connections.min(args.accounts));
        setup.spawn(async move {
            let mut i = worker;
            while i < accounts {
                let body = format!(r#"{{"id":"acct-{i}","currency":"CNY"}}"#);
                let (status, text) = post(&client, &format!("{base}/v1/accounts"), &key, body).await?;
                if status != 201 && status != 200 {
                    bail!("creating account {i}: HTTP {status}: {text}");
                }
                i += step;
            }
            Ok(())
        });
    }
    while let Some(r) = setup.join_next().await {
        r??;
    }
    eprintln!(
        "created {} accounts in {:.1} s; loading for {} s",
        args.accounts,
        started.elapsed().as_secs_f64(),
        args.duration
    );

    let rate = args.rate.map(|r| r.get());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..args.connections {
        let (target, key) = (target.clone(), key.clone());
        let (mode, batch, accounts, connections) = (args.mode, args.batch, args.accounts, args.connections);
        let risk_context = args.risk_context;
        workers.spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(worker as u64);
            let mut stats = Stats { latencies_us: Vec::new(), transfers: 0, declined: 0, errors: 0 };
            let mut conn = Conn::new(target);
            let mut n = 0u64;
            // Appends one transfer's JSON to `out` (no allocation per transfer: a batch body is
            // one string, so the client takes as little CPU from the server on shared cores as it can).
            let transfer = |rng: &mut rand::rngs::StdRng, n: u64, out: &mut Vec<u8>| {
                use std::io::Write as _;
                let debit = rng.random_range(0..accounts);
                let credit = (debit + 1 + rng.random_range(0..accounts - 1)) % accounts;
                let _ = write!(
                    out,
                    r#"{{"id":"w{worker}-{n}","debit_account_id":"acct-{debit}","credit_account_id":"acct-{credit}","amount":{},"currency":"CNY""#,
                    rng.random_range(1..100_000u64)
                );
                if risk_context {
                    // The payer's device and an address from the pair, as `bench/http/single.lua`
                    // sends them with RISK=1.
                    let _ = write!(
                        out,
                        r#","risk_context":{{"device_id":"dev-{debit}","ip":"10.0.{}.{}","channel":"app","kyc_tier":"3"}}"#,
                        debit % 256,
                        credit % 256
                    );
                }
                out.push(b'}');
            };
            // Open loop: this connection's requests are due every `connections / rate` seconds,
            // offset so that the connections' requests interleave.
            let interval = rate.map(|r| Duration::from_secs_f64(connections as f64 / r as f64));
            let mut due = started + interval.map_or(Duration::ZERO, |i| i.mul_f64(worker as f64 / connections as f64));
            let mut answered_at = started;
            let mut body = Vec::with_capacity(match mode {
                Mode::Single => 192,
                Mode::Batch => 32 + batch * 160,
            });
            loop {
                let now = Instant::now();
                if now >= deadline || (interval.is_some() && due >= deadline) {
                    break;
                }
                // A request is timed from when it was due if it is late because this connection
                // was still waiting for the previous answer at that moment (the server's delay),
                // and from when it is sent otherwise (the client's own lateness, such as its timer's
                // 1 ms granularity, is not the server's latency).
                let from = match interval {
                    Some(_) if answered_at > due => due,
                    Some(_) if due > now => {
                        tokio::time::sleep_until(due.into()).await;
                        Instant::now()
                    }
                    _ => now,
                };
                body.clear();
                let (path, count) = match mode {
                    Mode::Single => {
                        n += 1;
                        transfer(&mut rng, n, &mut body);
                        ("/v1/transfers", 1)
                    }
                    Mode::Batch => {
                        body.extend_from_slice(br#"{"transfers":["#);
                        for i in 0..batch {
                            if i > 0 {
                                body.push(b',');
                            }
                            n += 1;
                            transfer(&mut rng, n, &mut body);
                        }
                        body.extend_from_slice(b"]}");
                        ("/v1/transfers/batch", batch)
                    }
                };
                match conn.post(path, &key, &body).await {
                    Ok(200 | 201) => stats.transfers += count as u64,
                    Ok(422) if conn.answered_with(br#""code":"risk_declined""#) => stats.declined += 1,
                    _ => stats.errors += 1,
                }
                answered_at = Instant::now();
                stats.latencies_us.push((answered_at - from).as_micros().min(u32::MAX as u128) as u32);
                if let Some(i) = interval {
                    due += i;
                }
            }
            stats
        });
    }
    let mut all = Stats { latencies_us: Vec::new(), transfers: 0, declined: 0, errors: 0 };
    while let Some(r) = workers.join_next().await {
        let s = r?;
        all.latencies_us.extend(s.latencies_us);
        all.transfers += s.transfers;
        all.errors += s.errors;
        all.declined += s.declined;
    }
    let seconds = started.elapsed().as_secs_f64();
    all.latencies_us.sort_unstable();
    let pct = |p: f64| {
        if all.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((all.latencies_us.len() as f64 * p).ceil() as usize).clamp(1, all.latencies_us.len()) - 1;
        all.latencies_us[i] as f64 / 1e3
    };
    let requests = all.latencies_us.len();
    let (mode, connections, errors, declined) = (args.mode, args.connections, all.errors, all.declined);
    let offered = args.rate.map_or_else(|| "closed loop".to_string(), |r| format!("offered {r}/s"));
    let offered_json = args.rate.map_or(0, |r| r.get());
    let (rps, tps) = (requests as f64 / seconds, all.transfers as f64 / seconds);
    let (p50, p99, p999) = (pct(0.5), pct(0.99), pct(0.999));
    eprintln!(
        "{requests} requests in {seconds:.1} s over {connections} connections ({mode:?}, {offered}): {rps:.0} req/s, \
         {tps:.0} transfers/s, p50 {p50:.2} ms, p99 {p99:.2} ms, p99.9 {p999:.2} ms, {declined} declined by risk control, {errors} errors"
    );
    println!(
        "{{\"mode\":\"{mode:?}\",\"connections\":{connections},\"offered_per_s\":{offered_json},\"seconds\":{seconds:.3},\"requests\":{requests},\
         \"requests_per_s\":{rps:.0},\"transfers_per_s\":{tps:.0},\"p50_ms\":{p50:.3},\"p99_ms\":{p99:.3},\
         \"p999_ms\":{p999:.3},\"declined\":{declined},\"errors\":{errors}}}"
    );
    Ok(if all.errors == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Where the load goes: a plain-HTTP host and port.
#[derive(Clone, Debug)]
struct Target {
    /// `host:port`, for connecting and for the `Host` header.
    authority: String,
}

impl Target {
    fn parse(base: &str) -> anyhow::Result<Target> {
        let url = reqwest::Url::parse(base).with_context(|| format!("--url {base}"))?;
        if url.scheme() != "http" {
            bail!("--url must be http:// (the load client speaks plain HTTP/1.1)");
        }
        let host = url.host_str().context("--url has no host")?;
        let port = url.port_or_known_default().unwrap_or(80);
        Ok(Target { authority: format!("{host}:{port}") })
    }
}

/// Most bytes of one response the load client reads (a batch of 8,189 results is ~1.3 MB).
const RESPONSE_BYTES_MAX: usize = 16 << 20;

/// One keep-alive HTTP/1.1 connection of the load client: a request written in one buffer and its
/// response read by `Content-Length`, with no per-request allocation once warm. Much lighter than a
/// general client, so that on a machine shared with the server the client's own CPU stays small.
struct Conn {
    target: Target,
    stream: Option<tokio::net::TcpStream>,
    request: Vec<u8>,
    response: Vec<u8>,
}

impl Conn {
    fn new(target: Target) -> Conn {
        Conn { target, stream: None, request: Vec::with_capacity(512), response: Vec::with_capacity(4096) }
    }

    /// Whether the last response (head and body) holds `needle`.
    fn answered_with(&self, needle: &[u8]) -> bool {
        self.response.windows(needle.len()).any(|w| w == needle)
    }

    /// POSTs `body` (JSON) to `path` and returns the status; the connection is reopened on the next
    /// call after an error or a `Connection: close`.
    async fn post(&mut self, path: &str, key: &str, body: &[u8]) -> anyhow::Result<u16> {
        let result = self.exchange(path, key, body).await;
        if !matches!(result, Ok((_, true))) {
            self.stream = None;
        }
        result.map(|(status, _)| status)
    }

    async fn exchange(&mut self, path: &str, key: &str, body: &[u8]) -> anyhow::Result<(u16, bool)> {
        use std::io::Write as _;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        if self.stream.is_none() {
            let stream = tokio::net::TcpStream::connect(&self.target.authority)
                .await
                .with_context(|| format!("connecting to {}", self.target.authority))?;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("connected above");
        self.request.clear();
        write!(
            self.request,
            "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.target.authority,
            body.len()
        )?;
        self.request.extend_from_slice(body);
        stream.write_all(&self.request).await?;
        self.response.clear();
        let mut chunk = [0u8; 16 << 10];
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head_len) = parsed.parse(&self.response)? {
                let status = parsed.code.context("response without a status")?;
                let mut content_length = None;
                let mut keep_alive = true;
                for h in parsed.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        content_length = Some(std::str::from_utf8(h.value)?.trim().parse::<usize>()?);
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        keep_alive = !h.value.eq_ignore_ascii_case(b"close");
                    }
                }
                let total = head_len + content_length.context("response without Content-Length")?;
                if total > RESPONSE_BYTES_MAX {
                    bail!("response of {total} bytes, more than {RESPONSE_BYTES_MAX}");
                }
                while self.response.len() < total {
                    let read = stream.read(&mut chunk).await?;
                    if read == 0 {
                        bail!("connection closed inside a response");
                    }
                    self.response.extend_from_slice(&chunk[..read]);
                }
                if self.response.len() > total {
                    bail!("bytes after the response (the client sends one request at a time)");
                }
                return Ok((status, keep_alive));
            }
            if self.response.len() > RESPONSE_BYTES_MAX {
                bail!("response head longer than {RESPONSE_BYTES_MAX} bytes");
            }
            let read = stream.read(&mut chunk).await?;
            if read == 0 {
                bail!("connection closed before a response");
            }
            self.response.extend_from_slice(&chunk[..read]);
        }
    }
}
