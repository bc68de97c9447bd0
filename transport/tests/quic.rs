//! Real QUIC on loopback: mutual TLS, refusals, joins, malformed frames, streaming.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use sluice_transport::{
    codes, identity::node_id_from_cert, join::BoxFuture, join_cluster, serve, CaCert, CertRequest,
    Client, ClusterCa, Endpoint, Handler, JoinAuthority, JoinOptions, JoinRefusal, JoinRequest,
    JoinResponse, JoinToken, NodeIdentity, Reply, TokenJoinAuthority, TransportConfig,
    TransportError,
};

const T: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
enum Req {
    Echo(String),
    WhoAmI,
    Count(u32),
    Sleep(u64),
    Abort,
}

#[derive(Default)]
struct TestHandler {
    calls: AtomicUsize,
    stream_cancelled: AtomicBool,
}

impl Handler for TestHandler {
    type Request = Req;

    async fn handle(&self, peer: u64, request: Req, mut reply: Reply) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let _ = match request {
            Req::Echo(s) => reply.respond(&s).await,
            Req::WhoAmI => reply.respond(&peer).await,
            Req::Count(n) => {
                for i in 0..n {
                    if reply.send(&i).await.is_err() {
                        self.stream_cancelled.store(true, Ordering::SeqCst);
                        return;
                    }
                }
                reply.finish()
            }
            Req::Sleep(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                reply.respond(&ms).await
            }
            Req::Abort => {
                drop(reply);
                Ok(())
            }
        };
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn bind(identity: &NodeIdentity, ca: &CaCert) -> Endpoint {
    Endpoint::bind(loopback(), identity, ca, TransportConfig::default()).unwrap()
}

/// A serving node: its endpoint, address and handler.
struct Server {
    endpoint: Endpoint,
    addr: SocketAddr,
    handler: Arc<TestHandler>,
}

fn start_server(
    identity: &NodeIdentity,
    ca: &CaCert,
    join: Option<Arc<dyn JoinAuthority>>,
) -> Server {
    let endpoint = bind(identity, ca);
    let addr = endpoint.local_addr().unwrap();
    let handler = Arc::new(TestHandler::default());
    tokio::spawn(serve(endpoint.clone(), Arc::clone(&handler), join));
    Server {
        endpoint,
        addr,
        handler,
    }
}

#[tokio::test]
async fn mutual_tls_round_trip_sees_the_callers_node_id() {
    init_tracing();
    let ca = ClusterCa::generate("test").unwrap();
    let server = start_server(&NodeIdentity::generate(&ca, 1).unwrap(), ca.cert(), None);
    let client = Client::new(bind(&NodeIdentity::generate(&ca, 2).unwrap(), ca.cert()));

    let who: u64 = client.call(server.addr, &Req::WhoAmI, T).await.unwrap();
    assert_eq!(who, 2);
    let echo: String = client
        .call(server.addr, &Req::Echo("hello".into()), T)
        .await
        .unwrap();
    assert_eq!(echo, "hello");

    // Calls share one connection, whose peer is node 1.
    let a = client.connection(server.addr).await.unwrap();
    let b = client.connection(server.addr).await.unwrap();
    assert_eq!(a.quinn().stable_id(), b.quinn().stable_id());
    assert_eq!(a.node_id(), 1);

    // A closed connection is replaced on the next call.
    a.close();
    let who: u64 = client.call(server.addr, &Req::WhoAmI, T).await.unwrap();
    assert_eq!(who, 2);
    let c = client.connection(server.addr).await.unwrap();
    assert_ne!(c.quinn().stable_id(), a.quinn().stable_id());

    // Asking for a specific node checks who answered.
    let ep = client.endpoint();
    assert_eq!(ep.connect(server.addr, Some(1)).await.unwrap().node_id(), 1);
    let err = ep.connect(server.addr, Some(5)).await.unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::WrongPeer {
                expected: 5,
                actual: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn many_concurrent_calls_wait_at_the_stream_limit() {
    let ca = ClusterCa::generate("test").unwrap();
    let config = TransportConfig {
        max_concurrent_streams: 4,
        ..TransportConfig::default()
    };
    let endpoint = Endpoint::bind(
        loopback(),
        &NodeIdentity::generate(&ca, 1).unwrap(),
        ca.cert(),
        config,
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    tokio::spawn(serve(endpoint, Arc::new(TestHandler::default()), None));
    let client = Arc::new(Client::new(bind(
        &NodeIdentity::generate(&ca, 2).unwrap(),
        ca.cert(),
    )));
    let calls = (0..40u64).map(|i| {
        let client = Arc::clone(&client);
        tokio::spawn(async move {
            client
                .call::<_, u64>(addr, &Req::Sleep(i % 5 * 10), Duration::from_secs(20))
                .await
        })
    });
    for (i, call) in calls.enumerate() {
        assert_eq!(call.await.unwrap().unwrap(), i as u64 % 5 * 10);
    }
}

/// A raw quinn client for `sluice/1` that trusts the cluster CA but presents no
/// certificate.
fn anonymous_cluster_client(ca: &CaCert) -> (quinn::Endpoint, quinn::ClientConfig) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"sluice/1".to_vec()];
    let config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ));
    (quinn::Endpoint::client(loopback()).unwrap(), config)
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_on_its_first_read() {
    init_tracing();
    let ca = ClusterCa::generate("test").unwrap();
    let server = start_server(&NodeIdentity::generate(&ca, 1).unwrap(), ca.cert(), None);
    let (endpoint, config) = anonymous_cluster_client(ca.cert());

    // The handshake may well complete (TLS 1.3): the refusal shows on the first read.
    let result = async {
        let conn = endpoint
            .connect_with(config, server.addr, "node-1.sluice")
            .unwrap()
            .await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        let request = sluice_transport::encode(&Req::WhoAmI).unwrap();
        match send.write_all(&request).await {
            Ok(()) => {}
            Err(quinn::WriteError::ConnectionLost(e)) => return Err(e),
            Err(e) => panic!("unexpected write error: {e}"),
        }
        let _ = send.finish();
        match recv.read_to_end(1 << 20).await {
            Ok(bytes) => Ok(bytes),
            Err(quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(e))) => Err(e),
            Err(e) => panic!("unexpected read error: {e}"),
        }
    }
    .await;
    let err = result.expect_err("an anonymous client must not get an answer");
    let quinn::ConnectionError::ApplicationClosed(close) = &err else {
        panic!("unexpected error: {err}");
    };
    assert_eq!(close.error_code, codes::NO_CLIENT_CERT);
    assert_eq!(&close.reason[..], b"peer presented no certificate");
    // Mapped to the crate's error, the message says why.
    assert_eq!(
        TransportError::from(err).to_string(),
        "peer presented no certificate"
    );
    assert_eq!(server.handler.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_both_ways() {
    init_tracing();
    let ca = ClusterCa::generate("test").unwrap();
    let rogue_ca = ClusterCa::generate("rogue").unwrap();
    let server = start_server(&NodeIdentity::generate(&ca, 1).unwrap(), ca.cert(), None);

    // A client with a rogue certificate that trusts the real CA: the server refuses it.
    let rogue = Client::new(bind(
        &NodeIdentity::generate(&rogue_ca, 2).unwrap(),
        ca.cert(),
    ));
    let err = rogue
        .call::<_, u64>(server.addr, &Req::WhoAmI, T)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Refused(_) | TransportError::Handshake { .. }
        ) && err.to_string().contains("certificate"),
        "{err}"
    );
    assert_eq!(server.handler.calls.load(Ordering::SeqCst), 0);

    // A rogue server: a real client refuses it during the handshake.
    let rogue_server = start_server(
        &NodeIdentity::generate(&rogue_ca, 3).unwrap(),
        rogue_ca.cert(),
        None,
    );
    let client = Client::new(bind(&NodeIdentity::generate(&ca, 4).unwrap(), ca.cert()));
    let err = client
        .call::<_, u64>(rogue_server.addr, &Req::WhoAmI, T)
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Handshake { .. }), "{err}");
    assert_eq!(rogue_server.handler.calls.load(Ordering::SeqCst), 0);
}

/// Counts join requests that reach the server.
struct Counting {
    inner: TokenJoinAuthority,
    requests: AtomicUsize,
}

impl JoinAuthority for Counting {
    fn join(&self, request: JoinRequest) -> BoxFuture<'_, Result<JoinResponse, JoinRefusal>> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.inner.join(request)
    }
}

#[tokio::test]
async fn joining_with_the_token_gives_a_working_identity() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("test").unwrap();
    let token = JoinToken::generate(ca.cert()).unwrap();
    let first = NodeIdentity::generate(&ca, 1).unwrap();
    let ca_cert = ca.cert().clone();
    let authority = Arc::new(Counting {
        inner: TokenJoinAuthority::new(ca, token.clone(), 2, [1]),
        requests: AtomicUsize::new(0),
    });
    let server = start_server(&first, &ca_cert, Some(authority.clone()));
    let config = TransportConfig::default();

    // The token round-trips through its string form, as an operator would paste it.
    let pasted: JoinToken = token.to_string().parse().unwrap();
    let options = JoinOptions {
        rack: Some("rack-b".into()),
        addresses: vec!["127.0.0.1:7000".parse().unwrap()],
        ..JoinOptions::default()
    };
    let joined = join_cluster(server.addr, &pasted, options, &config)
        .await
        .unwrap();
    assert_eq!(joined.identity.node_id(), 2);
    assert_eq!(
        node_id_from_cert(&joined.identity.cert_chain()[0]).unwrap(),
        2
    );
    assert_eq!(joined.ca, ca_cert);

    // Saved and loaded, the identity calls over `sluice/1` as node 2.
    joined.save(dir.path()).unwrap();
    let ca_loaded = CaCert::load(dir.path()).unwrap();
    let identity = NodeIdentity::load(dir.path(), &ca_loaded).unwrap();
    let client = Client::new(bind(&identity, &ca_loaded));
    let who: u64 = client.call(server.addr, &Req::WhoAmI, T).await.unwrap();
    assert_eq!(who, 2);

    // The next joiner gets the next id; a taken id is refused.
    let again = join_cluster(server.addr, &token, JoinOptions::default(), &config)
        .await
        .unwrap();
    assert_eq!(again.identity.node_id(), 3);
    let taken = JoinOptions {
        requested_node_id: Some(1),
        ..JoinOptions::default()
    };
    let err = join_cluster(server.addr, &token, taken, &config)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::JoinRefused(JoinRefusal::NodeIdTaken(1))
        ),
        "{err}"
    );

    // A wrong secret is refused with a clear error.
    let wrong = JoinToken::from_parts([7; 32], *token.ca_sha256());
    let err = join_cluster(server.addr, &wrong, JoinOptions::default(), &config)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::JoinRefused(JoinRefusal::WrongToken)),
        "{err}"
    );
    assert_eq!(err.to_string(), "join refused: wrong token");
    let requests_so_far = authority.requests.load(Ordering::SeqCst);
    assert_eq!(requests_so_far, 4);

    // A token pinning another CA: the joiner refuses the server and never sends the secret.
    let other_ca = ClusterCa::generate("other").unwrap();
    let misdirected = JoinToken::from_parts(*token.secret(), other_ca.cert().fingerprint());
    let err = join_cluster(server.addr, &misdirected, JoinOptions::default(), &config)
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::CaMismatch), "{err}");
    assert_eq!(authority.requests.load(Ordering::SeqCst), requests_so_far);
}

#[tokio::test]
async fn a_node_without_a_join_authority_refuses_joins() {
    let ca = ClusterCa::generate("test").unwrap();
    let token = JoinToken::generate(ca.cert()).unwrap();
    let server = start_server(&NodeIdentity::generate(&ca, 1).unwrap(), ca.cert(), None);
    let err = join_cluster(
        server.addr,
        &token,
        JoinOptions::default(),
        &TransportConfig::default(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("does not accept joins"), "{err}");
}

#[tokio::test]
async fn a_malformed_frame_resets_only_its_stream() {
    init_tracing();
    let ca = ClusterCa::generate("test").unwrap();
    let server = start_server(&NodeIdentity::generate(&ca, 1).unwrap(), ca.cert(), None);
    let client = bind(&NodeIdentity::generate(&ca, 2).unwrap(), ca.cert());
    let conn = client.connect(server.addr, Some(1)).await.unwrap();

    // A good call that stays open across the bad ones.
    let mut long = conn.call_stream::<_, u32>(&Req::Count(3), T).await.unwrap();
    assert_eq!(long.next().await.unwrap().unwrap(), 0);

    let good = sluice_transport::encode(&Req::WhoAmI).unwrap();
    let mut wrong_version = good.clone();
    wrong_version[0] = 9;
    let oversized = vec![1, 0xff, 0xff, 0xff, 0xff, 0];
    let mut garbage_payload = vec![1, 0, 0, 0, 3];
    garbage_payload.extend([0xff, 0xff, 0xff]);
    let truncated = good[..good.len() - 1].to_vec();
    for bad in [wrong_version, oversized, garbage_payload, truncated] {
        let (mut send, mut recv) = conn.quinn().open_bi().await.unwrap();
        send.write_all(&bad).await.unwrap();
        let _ = send.finish();
        let err = tokio::time::timeout(T, recv.read_to_end(1 << 20))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(
                err,
                quinn::ReadToEndError::Read(quinn::ReadError::Reset(code)) if code == codes::BAD_FRAME
            ),
            "{bad:?}: {err}"
        );
    }

    // The connection and its other stream are unharmed.
    assert!(!conn.is_closed());
    assert_eq!(long.next().await.unwrap().unwrap(), 1);
    assert_eq!(long.next().await.unwrap().unwrap(), 2);
    assert!(long.next().await.is_none());
    let who: u64 = conn.call(&Req::WhoAmI, T).await.unwrap();
    assert_eq!(who, 2);
}

#[tokio::test]
async fn a_streaming_call_delivers_every_frame_in_order_and_ends() {
    let ca = ClusterCa::generate("test").unwrap();
    let server = start_server(&NodeIdentity::generate(&ca, 1).unwrap(), ca.cert(), None);
    let client = Client::new(bind(&NodeIdentity::generate(&ca, 2).unwrap(), ca.cert()));

    let mut stream = client
        .call_stream::<_, u32>(server.addr, &Req::Count(1000), T)
        .await
        .unwrap();
    for expected in 0..1000 {
        assert_eq!(stream.next().await.unwrap().unwrap(), expected);
    }
    assert!(stream.next().await.is_none());
    assert!(stream.next().await.is_none());

    let empty = client
        .call_stream::<_, u32>(server.addr, &Req::Count(0), T)
        .await
        .unwrap();
    assert!(empty.collect().await.unwrap().is_empty());

    // Dropping the stream early stops the server's handler.
    let mut endless = client
        .call_stream::<_, u32>(server.addr, &Req::Count(u32::MAX), T)
        .await
        .unwrap();
    assert_eq!(endless.next().await.unwrap().unwrap(), 0);
    drop(endless);
    tokio::time::timeout(T, async {
        while !server.handler.stream_cancelled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the handler noticed the caller went away");
}

#[tokio::test]
async fn handler_aborts_and_timeouts_are_errors() {
    let ca = ClusterCa::generate("test").unwrap();
    let server = start_server(&NodeIdentity::generate(&ca, 1).unwrap(), ca.cert(), None);
    let client = Client::new(bind(&NodeIdentity::generate(&ca, 2).unwrap(), ca.cert()));

    let err = client
        .call::<_, u64>(server.addr, &Req::Abort, T)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("handler aborted"),
        "unexpected error: {err}"
    );

    let short = Duration::from_millis(100);
    let err = client
        .call::<_, u64>(server.addr, &Req::Sleep(2_000), short)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::Timeout(d) if d == short),
        "{err}"
    );
    assert_eq!(err.to_string(), "timed out after 100ms");

    // Nothing listens here: the call times out instead of hanging.
    let silent = std::net::UdpSocket::bind(loopback()).unwrap();
    let err = client
        .call::<_, u64>(silent.local_addr().unwrap(), &Req::WhoAmI, short)
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Timeout(_)), "{err}");
}

#[tokio::test]
async fn the_client_reconnects_to_a_restarted_node() {
    let ca = ClusterCa::generate("test").unwrap();
    let identity = NodeIdentity::generate(&ca, 1).unwrap();
    let server = start_server(&identity, ca.cert(), None);
    let client = Client::new(bind(&NodeIdentity::generate(&ca, 2).unwrap(), ca.cert()));
    let _: u64 = client.call(server.addr, &Req::WhoAmI, T).await.unwrap();
    let old = client.connection(server.addr).await.unwrap();

    server.endpoint.close();
    server.endpoint.wait_idle(Duration::from_secs(1)).await;
    drop(server.endpoint);
    // The cached connection learns of the close.
    tokio::time::timeout(T, old.quinn().closed()).await.unwrap();
    assert!(old.is_closed());

    // The old endpoint's socket is released once its tasks have wound down.
    let restarted = tokio::time::timeout(T, async {
        loop {
            match Endpoint::bind(
                server.addr,
                &identity,
                ca.cert(),
                TransportConfig::default(),
            ) {
                Ok(endpoint) => return endpoint,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .unwrap();
    tokio::spawn(serve(restarted, Arc::new(TestHandler::default()), None));
    let who: u64 = client.call(server.addr, &Req::WhoAmI, T).await.unwrap();
    assert_eq!(who, 2);
}

#[tokio::test]
async fn a_dead_peer_is_noticed_within_the_idle_timeout() {
    let ca = ClusterCa::generate("test").unwrap();
    let config = TransportConfig {
        keep_alive: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(500),
        ..TransportConfig::default()
    };
    // The node is reached through a relay; cutting the relay makes it vanish without a
    // goodbye.
    let node = start_server(&NodeIdentity::generate(&ca, 1).unwrap(), ca.cert(), None);
    let relay = Relay::start(node.addr).await;
    let proxy_addr = relay.addr;
    let endpoint = Endpoint::bind(
        loopback(),
        &NodeIdentity::generate(&ca, 2).unwrap(),
        ca.cert(),
        config,
    )
    .unwrap();
    let conn = endpoint.connect(proxy_addr, Some(1)).await.unwrap();
    let who: u64 = conn.call(&Req::WhoAmI, T).await.unwrap();
    assert_eq!(who, 2);

    // Idle but alive: keep-alives hold the connection open past the idle timeout.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(!conn.is_closed());

    relay.cut();
    let started = tokio::time::Instant::now();
    let reason = tokio::time::timeout(T, conn.quinn().closed())
        .await
        .unwrap();
    assert!(
        matches!(reason, quinn::ConnectionError::TimedOut),
        "{reason}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// A UDP relay in front of a node: its peers dial `addr`. The relay can be cut (the node
/// vanishes without a goodbye) or pointed at another node on the spot (as if the process
/// behind the address were replaced).
struct Relay {
    addr: SocketAddr,
    target: Arc<std::sync::Mutex<Option<SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Self {
        let front = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
        let back = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
        let addr = front.local_addr().unwrap();
        let target = Arc::new(std::sync::Mutex::new(Some(target)));
        let to = Arc::clone(&target);
        let task = tokio::spawn(async move {
            let mut client = None;
            let mut a = [0u8; 2048];
            let mut b = [0u8; 2048];
            loop {
                let current = *to.lock().unwrap();
                tokio::select! {
                    r = front.recv_from(&mut a) => {
                        let Ok((n, from)) = r else { return };
                        client = Some(from);
                        if let Some(node) = current {
                            let _ = back.send_to(&a[..n], node).await;
                        }
                    }
                    r = back.recv_from(&mut b) => {
                        let Ok((n, from)) = r else { return };
                        if let (Some(c), true) = (client, current == Some(from)) {
                            let _ = front.send_to(&b[..n], c).await;
                        }
                    }
                }
            }
        });
        Relay { addr, target, task }
    }

    fn cut(&self) {
        *self.target.lock().unwrap() = None;
    }

    fn point_at(&self, node: SocketAddr) {
        *self.target.lock().unwrap() = Some(node);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_node_replaced_without_a_goodbye_resets_its_former_connections() {
    init_tracing();
    let ca = ClusterCa::generate("test").unwrap();
    let identity = NodeIdentity::generate(&ca, 1).unwrap();
    let old = start_server(&identity, ca.cert(), None);
    let relay = Relay::start(old.addr).await;
    // An idle timeout far beyond the test's patience: only a reset can close the
    // connection in time.
    let config = TransportConfig {
        idle_timeout: Duration::from_secs(60),
        ..TransportConfig::default()
    };
    let client = Client::new(
        Endpoint::bind(
            loopback(),
            &NodeIdentity::generate(&ca, 2).unwrap(),
            ca.cert(),
            config,
        )
        .unwrap(),
    );
    let _: u64 = client.call(relay.addr, &Req::WhoAmI, T).await.unwrap();
    let conn = client.connection(relay.addr).await.unwrap();

    // The node's process is replaced by a new one with the same identity (a crash and a
    // restart): the old one never says goodbye.
    let new = start_server(&identity, ca.cert(), None);
    relay.point_at(new.addr);
    let reason = tokio::time::timeout(T, conn.quinn().closed())
        .await
        .expect("the former connection is still open");
    assert!(matches!(reason, quinn::ConnectionError::Reset), "{reason}");
    // The next call dials the new process.
    let _: u64 = client.call(relay.addr, &Req::WhoAmI, T).await.unwrap();
    assert_eq!(new.handler.calls.load(Ordering::SeqCst), 1);
    drop(old);
}

#[tokio::test]
async fn a_renewed_certificate_is_presented_on_new_connections_both_ways() {
    init_tracing();
    let ca = ClusterCa::generate("test").unwrap();
    let day = Duration::from_secs(86_400);
    // Two nodes whose certificates live two seconds.
    let short = |id: u64| {
        let req = CertRequest::new().unwrap();
        let pem = ca
            .sign_csr(req.csr_pem(), id, Duration::from_secs(2))
            .unwrap();
        req.into_identity(&pem, ca.cert()).unwrap()
    };
    let (server_id, client_id) = (short(1), short(2));
    let server = start_server(&server_id, ca.cert(), None);
    let client = Client::new(bind(&client_id, ca.cert()));
    let who: u64 = client.call(server.addr, &Req::WhoAmI, T).await.unwrap();
    assert_eq!(who, 2);
    client.connection(server.addr).await.unwrap().close();
    // Both expire (certificate times have whole seconds).
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    let renew = |id: &NodeIdentity| {
        let pem = ca
            .sign_csr(&id.renewal_request().unwrap(), id.node_id(), day)
            .unwrap();
        id.renewed(&pem, ca.cert()).unwrap()
    };

    // The expired client is refused by the server.
    let err = client
        .call::<_, u64>(server.addr, &Req::WhoAmI, T)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    // Renewed, it is let in, and then refuses the expired server.
    client.endpoint().renew(&renew(&client_id)).unwrap();
    let err = client
        .call::<_, u64>(server.addr, &Req::WhoAmI, T)
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Handshake { .. }), "{err}");
    // The server renewed too: calls go through again, as node 2.
    server.endpoint.renew(&renew(&server_id)).unwrap();
    let who: u64 = client.call(server.addr, &Req::WhoAmI, T).await.unwrap();
    assert_eq!(who, 2);

    // An endpoint takes only its own node's certificate.
    let err = server.endpoint.renew(&renew(&client_id)).unwrap_err();
    assert!(err.to_string().contains("node 2"), "{err}");
}
