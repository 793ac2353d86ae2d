//! The UDP relay: sockets, flows and the delivery schedulers around two [`LinkModel`]s.
//!
//! Tasks (a fixed number, plus one per client; none per packet):
//! - the listen task reads what clients send, finds or makes the client's flow (an upstream
//!   socket connected to the server, like a NAT binding) and offers the packet to the up link;
//! - one task per flow reads what the server answers and offers it to the down link;
//! - one scheduler per direction holds the accepted packets in a heap ordered by delivery
//!   time, sleeps until the earliest is due (`sleep_until`, woken early only when a packet
//!   due sooner arrives) and sends every due packet in one batch.

use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

use crate::model::{DirectionCounters, LinkModel, Verdict};
use crate::spec::WanSpec;

/// Largest UDP payload relayed (the IPv4 maximum).
const MAX_DATAGRAM: usize = 65_535;

/// Socket buffers asked for (the kernel caps them at `net.core.{r,w}mem_max`). Deep buffers
/// matter: the relay must not lose packets the model did not decide to lose.
const SOCKET_BUFFER: usize = 4 << 20;

/// Counters of both directions at one instant (each direction read under its own lock, so
/// each is internally consistent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Client -> upstream server.
    pub up: DirectionCounters,
    /// Upstream server -> client.
    pub down: DirectionCounters,
    /// Client addresses seen (one upstream socket each).
    pub flows: usize,
}

impl Counters {
    /// Packets accepted by either direction and not yet delivered.
    pub fn in_flight_packets(&self) -> u64 {
        self.up.in_flight_packets() + self.down.in_flight_packets()
    }
}

/// Where a scheduled packet goes.
enum Target {
    /// Up: through the client's upstream socket (connected to the server).
    Upstream(Arc<UdpSocket>),
    /// Down: from the listen socket the client sent to, to the client.
    Client(Arc<UdpSocket>, SocketAddr),
}

/// One way through the link: what clients send to `listen` goes to `upstream`. Every route of
/// an emulator crosses the same two links (same queue, same bottleneck), as the flows of a
/// branch office to different servers cross its one WAN link.
struct Route {
    listen: Arc<UdpSocket>,
    upstream: SocketAddr,
}

struct Queued {
    at: Instant,
    seq: u64,
    data: Vec<u8>,
    to: Target,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    /// Reversed: the max-heap pops the earliest delivery, ties in arrival order.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

struct DirState {
    model: LinkModel,
    heap: BinaryHeap<Queued>,
    seq: u64,
    /// When the scheduler will wake up next (`None`: it waits for a notification).
    wake_at: Option<Instant>,
}

struct Direction {
    state: Mutex<DirState>,
    notify: Notify,
}

impl Direction {
    fn new(model: LinkModel) -> Self {
        Direction {
            state: Mutex::new(DirState { model, heap: BinaryHeap::new(), seq: 0, wake_at: None }),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, DirState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs the model on a packet that entered at `now` and schedules it if it survives.
    fn offer(&self, now: Instant, data: Vec<u8>, to: Target) {
        let mut st = self.lock();
        let Verdict::Deliver { at, .. } = st.model.offer(now, data.len()) else { return };
        st.seq += 1;
        let seq = st.seq;
        st.heap.push(Queued { at, seq, data, to });
        let wake = st.wake_at.is_none_or(|w| at < w);
        if wake {
            st.wake_at = Some(at);
        }
        drop(st);
        if wake {
            self.notify.notify_one();
        }
    }
}

struct Shared {
    dirs: [Direction; 2],
    routes: Vec<Route>,
    flows: Mutex<JoinSet<()>>,
    flow_socks: Mutex<Vec<Arc<UdpSocket>>>,
}

const UP: usize = 0;
const DOWN: usize = 1;

/// A running emulated WAN path between clients and one upstream server: clients send to
/// [`Emulator::local_addr`], the emulator forwards to the upstream address through the `up`
/// link and relays the answers back through the `down` link.
///
/// Dropping the handle stops the emulator (its tasks are aborted and its sockets close);
/// [`Emulator::shutdown`] does the same and waits until everything is closed.
pub struct Emulator {
    shared: Arc<Shared>,
    locals: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Emulator {
    /// Binds `listen` and starts relaying to `upstream` under `spec`.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        spec: WanSpec,
    ) -> io::Result<Self> {
        Self::start_routes(&[(listen, upstream)], spec).await
    }

    /// Binds each route's listen address and relays what arrives there to the route's
    /// upstream, every route through the same link (at least one route).
    pub async fn start_routes(
        routes: &[(SocketAddr, SocketAddr)],
        spec: WanSpec,
    ) -> io::Result<Self> {
        if routes.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "an emulator needs a route"));
        }
        let mut bound = Vec::with_capacity(routes.len());
        let mut locals = Vec::with_capacity(routes.len());
        for &(listen, upstream) in routes {
            let listen = Arc::new(bind_udp(listen)?);
            locals.push(listen.local_addr()?);
            bound.push(Route { listen, upstream });
        }
        let shared = Arc::new(Shared {
            dirs: [
                Direction::new(LinkModel::new(spec.up, UP as u64)),
                Direction::new(LinkModel::new(spec.down, DOWN as u64)),
            ],
            routes: bound,
            flows: Mutex::new(JoinSet::new()),
            flow_socks: Mutex::new(Vec::new()),
        });
        let mut tasks = vec![
            tokio::spawn(scheduler(shared.clone(), UP)),
            tokio::spawn(scheduler(shared.clone(), DOWN)),
        ];
        for i in 0..routes.len() {
            tasks.push(tokio::spawn(listen_task(shared.clone(), i)));
        }
        tracing::debug!(?locals, ?routes, "WAN emulator started");
        Ok(Emulator { shared, locals, tasks })
    }

    /// The address clients send to (the first route's).
    pub fn local_addr(&self) -> SocketAddr {
        self.locals[0]
    }

    /// The address clients send to for each route, in the order given.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.locals
    }

    /// Where packets are forwarded (the first route's upstream).
    pub fn upstream_addr(&self) -> SocketAddr {
        self.shared.routes[0].upstream
    }

    /// Counters of both directions now.
    pub fn counters(&self) -> Counters {
        Counters {
            up: self.shared.dirs[UP].lock().model.counters(),
            down: self.shared.dirs[DOWN].lock().model.counters(),
            flows: self.shared.flow_socks.lock().unwrap_or_else(|e| e.into_inner()).len(),
        }
    }

    /// The spec in force.
    pub fn spec(&self) -> WanSpec {
        WanSpec {
            up: self.shared.dirs[UP].lock().model.spec().clone(),
            down: self.shared.dirs[DOWN].lock().model.spec().clone(),
        }
    }

    /// Changes the link from now on (e.g. to make it worse mid-test). Packets already
    /// accepted keep their delivery times; later packets queue behind them and then meet the
    /// new delay, loss and rate.
    pub fn set_spec(&self, spec: WanSpec) {
        let now = Instant::now();
        self.shared.dirs[UP].lock().model.set_spec(spec.up, now);
        self.shared.dirs[DOWN].lock().model.set_spec(spec.down, now);
        tracing::debug!(locals = ?self.locals, "WAN emulator spec changed");
    }

    /// Waits until nothing is in flight in either direction and nothing waits unread in the
    /// relay's sockets, twice in a row 5 ms apart (or until `timeout` passes); returns
    /// whether the link drained. Once the senders have stopped and this returns true, the
    /// counters are final.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        let mut last = None;
        loop {
            let c = self.counters();
            if c.in_flight_packets() == 0 && !self.unread_datagrams() {
                if last == Some(c) {
                    return true;
                }
                last = Some(c);
            } else {
                last = None;
            }
            if Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Whether a datagram waits unread in one of the relay's sockets (not yet offered to the
    /// link, so not yet counted).
    fn unread_datagrams(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            let pending = |fd: std::os::fd::RawFd| {
                let mut n: libc::c_int = 0;
                // SIOCINQ (= FIONREAD): size of the next pending datagram, 0 if none.
                // SAFETY: `fd` belongs to a socket the relay owns and keeps open for this call
                // (borrowed from `routes`, or from `flow_socks` under its lock); FIONREAD writes
                // one c_int through the pointer, and `n` is a live, aligned c_int.
                let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
                r == 0 && n > 0
            };
            use std::os::fd::AsRawFd;
            if self.shared.routes.iter().any(|r| pending(r.listen.as_raw_fd())) {
                return true;
            }
            let flows = self.shared.flow_socks.lock().unwrap_or_else(|e| e.into_inner());
            flows.iter().any(|s| pending(s.as_raw_fd()))
        }
        #[cfg(not(target_os = "linux"))]
        false
    }

    /// Datagrams the kernel dropped on the emulator's own sockets because their receive
    /// buffers were full (Linux: the `drops` column of `/proc/net/udp{,6}`; `None` where that
    /// cannot be read). Anything above 0 means the relay lost packets the model did not
    /// decide to lose: the emulator was the bottleneck.
    pub fn socket_drops(&self) -> Option<u64> {
        let mut addrs = self.locals.clone();
        let flows = self.shared.flow_socks.lock().unwrap_or_else(|e| e.into_inner());
        addrs.extend(flows.iter().filter_map(|s| s.local_addr().ok()));
        proc_udp_drops(&addrs)
    }

    /// Stops relaying and waits until every task has ended and every socket is closed.
    pub async fn shutdown(mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        let mut flows =
            std::mem::take(&mut *self.shared.flows.lock().unwrap_or_else(|e| e.into_inner()));
        flows.shutdown().await;
        for d in &self.shared.dirs {
            d.lock().heap.clear(); // queued packets hold upstream sockets
        }
        self.shared.flow_socks.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.shared.flows.lock().unwrap_or_else(|e| e.into_inner()).abort_all();
        for d in &self.shared.dirs {
            d.lock().heap.clear();
        }
        self.shared.flow_socks.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// A tokio UDP socket bound to `addr` with 4 MiB receive and send buffers (as far as
/// `net.core.rmem_max`/`wmem_max` allow). The relay uses it for its own sockets; harnesses
/// that push bursts through the emulator want it too, since a default 208 KiB buffer
/// overflows within a millisecond at loopback speed and the loss would not be the link's.
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    UdpSocket::from_std(sock.into())
}

async fn listen_task(shared: Arc<Shared>, route: usize) {
    let mut flows: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let listen = shared.routes[route].listen.clone();
    loop {
        let (n, from) = match listen.recv_from(&mut buf).await {
            Ok(v) => v,
            Err(e) => {
                // ICMP errors for earlier sends to a client surface here; keep going, but do
                // not spin if the error persists.
                tracing::trace!(error = %e, "WAN emulator: receive error on the listen socket");
                if !matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
                ) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                continue;
            }
        };
        let now = Instant::now();
        let sock = match flows.get(&from) {
            Some(s) => s.clone(),
            None => match new_flow(&shared, route, from).await {
                Ok(s) => {
                    flows.insert(from, s.clone());
                    s
                }
                Err(e) => {
                    tracing::warn!(client = %from, error = %e, "WAN emulator: cannot open an upstream socket; packet ignored");
                    continue;
                }
            },
        };
        shared.dirs[UP].offer(now, buf[..n].to_vec(), Target::Upstream(sock));
    }
}

/// Opens the upstream socket of a new client and starts relaying its answers.
async fn new_flow(
    shared: &Arc<Shared>,
    route: usize,
    client: SocketAddr,
) -> io::Result<Arc<UdpSocket>> {
    let up = shared.routes[route].upstream;
    let listen = shared.routes[route].listen.clone();
    let bind_ip = match up.ip() {
        ip if ip.is_loopback() => ip,
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let sock = bind_udp(SocketAddr::new(bind_ip, 0))?;
    sock.connect(up).await?;
    let sock = Arc::new(sock);
    shared.flow_socks.lock().unwrap_or_else(|e| e.into_inner()).push(sock.clone());
    tracing::debug!(%client, via = %sock.local_addr()?, "WAN emulator: new flow");
    let (s, sh) = (sock.clone(), shared.clone());
    shared.flows.lock().unwrap_or_else(|e| e.into_inner()).spawn(async move {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            match s.recv(&mut buf).await {
                Ok(n) => sh.dirs[DOWN].offer(
                    Instant::now(),
                    buf[..n].to_vec(),
                    Target::Client(listen.clone(), client),
                ),
                // Port unreachable from an earlier send (server not up yet, or restarting).
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => {
                    tracing::warn!(%client, error = %e, "WAN emulator: upstream socket failed; flow stops");
                    return;
                }
            }
        }
    });
    Ok(sock)
}

/// Delivers the packets of one direction when they are due.
async fn scheduler(shared: Arc<Shared>, dir: usize) {
    let d = &shared.dirs[dir];
    let mut batch: Vec<Queued> = Vec::new();
    loop {
        let next = {
            let mut st = d.lock();
            let now = Instant::now();
            while st.heap.peek().is_some_and(|q| q.at <= now) {
                batch.push(st.heap.pop().expect("peeked"));
            }
            st.wake_at = st.heap.peek().map(|q| q.at);
            st.wake_at
        };
        if !batch.is_empty() {
            let mut results = Vec::with_capacity(batch.len());
            for q in batch.drain(..) {
                let r = match &q.to {
                    Target::Upstream(sock) => sock.send(&q.data).await,
                    Target::Client(listen, addr) => listen.send_to(&q.data, *addr).await,
                };
                if let Err(e) = &r {
                    tracing::trace!(error = %e, "WAN emulator: send failed");
                }
                results.push((q.data.len(), r.is_ok()));
            }
            let mut st = d.lock();
            for (len, ok) in results {
                if ok {
                    st.model.delivered(len);
                } else {
                    st.model.send_failed(len);
                }
            }
            continue; // more may have become due while sending
        }
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                    _ = d.notify.notified() => {}
                }
            }
            None => d.notify.notified().await,
        }
    }
}

/// Sums the `drops` column of `/proc/net/udp` and `/proc/net/udp6` for the given local
/// addresses (matched by port and address).
fn proc_udp_drops(addrs: &[SocketAddr]) -> Option<u64> {
    let mut total = 0;
    let mut read_any = false;
    for (file, v6) in [("/proc/net/udp", false), ("/proc/net/udp6", true)] {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        read_any = true;
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(drops)) = (cols.get(1), cols.last()) else { continue };
            let Some((_, port_hex)) = local.rsplit_once(':') else { continue };
            let Ok(port) = u16::from_str_radix(port_hex, 16) else { continue };
            if addrs.iter().any(|a| a.port() == port && a.is_ipv6() == v6) {
                total += drops.parse::<u64>().unwrap_or(0);
            }
        }
    }
    read_any.then_some(total)
}

/// An [`Emulator`] running on its own OS thread with a single-threaded tokio runtime.
///
/// Benchmarks want the relay to keep its timing whatever the code under test does with its
/// own runtime (a busy worker pool would delay the relay's timers); a dedicated thread also
/// lets [`EmulatorThread::cpu_time`] say how much CPU the relay itself used. Dereferences to
/// the [`Emulator`]; dropping it stops the relay and joins the thread.
pub struct EmulatorThread {
    emulator: Option<Arc<Emulator>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    #[cfg(target_os = "linux")]
    cpu_clock: Option<libc::clockid_t>,
}

impl EmulatorThread {
    /// Starts an emulator as [`Emulator::start`] does, on a new thread.
    pub fn start(listen: SocketAddr, upstream: SocketAddr, spec: WanSpec) -> io::Result<Self> {
        Self::start_routes(vec![(listen, upstream)], spec)
    }

    /// Starts an emulator as [`Emulator::start_routes`] does, on a new thread.
    pub fn start_routes(routes: Vec<(SocketAddr, SocketAddr)>, spec: WanSpec) -> io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("oasis-wanem".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            #[cfg(target_os = "linux")]
            let clock = {
                let mut id: libc::clockid_t = 0;
                // SAFETY: pthread_self is this live thread; id is a valid out pointer.
                let r = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) };
                (r == 0).then_some(id)
            };
            #[cfg(not(target_os = "linux"))]
            let clock: Option<i32> = None;
            rt.block_on(async move {
                match Emulator::start_routes(&routes, spec).await {
                    Ok(e) => {
                        let e = Arc::new(e);
                        let _ = tx.send(Ok((e.clone(), clock)));
                        let _ = stop_rx.await;
                        match Arc::try_unwrap(e) {
                            Ok(e) => e.shutdown().await,
                            Err(e) => drop(e),
                        }
                    }
                    Err(err) => {
                        let _ = tx.send(Err(err));
                    }
                }
            });
        })?;
        let (emulator, _clock) = rx
            .recv()
            .map_err(|_| io::Error::other("the emulator thread ended before starting"))??;
        Ok(EmulatorThread {
            emulator: Some(emulator),
            stop: Some(stop_tx),
            thread: Some(thread),
            #[cfg(target_os = "linux")]
            cpu_clock: _clock,
        })
    }

    /// CPU time (user + system) the relay thread has used so far (Linux; `None` elsewhere).
    pub fn cpu_time(&self) -> Option<Duration> {
        #[cfg(target_os = "linux")]
        {
            let id = self.cpu_clock?;
            let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: the thread is alive (joined only in drop), ts is a valid out pointer.
            let r = unsafe { libc::clock_gettime(id, &mut ts) };
            (r == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
        }
        #[cfg(not(target_os = "linux"))]
        None
    }
}

impl std::ops::Deref for EmulatorThread {
    type Target = Emulator;
    fn deref(&self) -> &Emulator {
        self.emulator.as_ref().expect("present until drop")
    }
}

impl Drop for EmulatorThread {
    fn drop(&mut self) {
        self.emulator.take();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
