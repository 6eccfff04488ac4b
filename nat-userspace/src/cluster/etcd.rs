//! The etcd store through the `etcd-client` crate (etcd's gRPC API, over tonic): TLS with
//! a CA and an optional client certificate, and etcd's user/password authentication
//! (`--cluster-store-opt kv.*`, Docker's names). The client connects on first use, so
//! natd starts while the store is down; every call has a deadline, and responses are
//! bounded (`MAX_RESPONSE_BYTES`).
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions, WatchStream,
};

use super::store::{ClusterStore, Cond, Event, Kv, Op, StoreError, Watch};
use crate::config::ClusterConfig;

/// How long connecting to the store may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a request may take once connected.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest response natd reads: a list of the whole tree at about 100,000 address
/// claims. A store that answers more (a writer filling it) fails the list rather than
/// natd's memory.
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// A client of one etcd cluster.
pub struct Etcd {
    endpoints: Vec<String>,
    options: ConnectOptions,
    tls: bool,
    client: tokio::sync::Mutex<Option<Client>>,
}

impl Etcd {
    pub fn new(config: &ClusterConfig) -> Self {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        if let Some(tls) = &config.tls {
            let mut settings = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.identity {
                settings = settings.identity(Identity::from_pem(cert, key));
            }
            options = options.with_tls(settings);
        }
        if let Some(auth) = &config.auth {
            options = options
                .with_user(auth.username.clone(), auth.password.clone())
                .with_auto_token_refresh(true);
        }
        Self {
            endpoints: config.endpoints.clone(),
            options,
            tls: config.tls.is_some(),
            client: Default::default(),
        }
    }

    /// The client, connected (and authenticated) on first use.
    async fn client(&self) -> Result<Client, StoreError> {
        let mut client = self.client.lock().await;
        if let Some(client) = client.as_ref() {
            return Ok(client.clone());
        }
        let connect = Client::connect(&self.endpoints, Some(self.options.clone()));
        let connected = tokio::time::timeout(CONNECT_TIMEOUT + REQUEST_TIMEOUT, connect)
            .await
            .map_err(|_| StoreError::Unavailable(format!("{}: no answer", self.describe())))?
            .map_err(store_error)?;
        *client = Some(connected.clone());
        Ok(connected)
    }

    async fn call<T, F>(&self, what: &str, call: impl FnOnce(Client) -> F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let client = self.client().await?;
        tokio::time::timeout(REQUEST_TIMEOUT, call(client))
            .await
            .map_err(|_| StoreError::Unavailable(format!("etcd {what}: no answer within {REQUEST_TIMEOUT:?}")))?
            .map_err(store_error)
    }

    /// One request, for `natd`'s start: a store that answers with the wrong certificate or
    /// refuses the credentials is a configuration error (returned); one that does not
    /// answer may come later (`Ok(Err)`).
    pub async fn probe(&self) -> Result<Result<(), StoreError>, StoreError> {
        let mut last = None;
        // A server that rejects the client certificate (TLS 1.3: after the client finished
        // its handshake) sends an alert and hangs up; the client may see the hang-up first,
        // as a broken pipe. Such an answer is asked again, a few times, for the alert.
        for _ in 0..3 {
            match self.range(&super::migrated_key()).await {
                // Write access too: etcd checks the permission of every operation of a
                // transaction, also of a branch its compare does not take.
                Ok(_) => match self.check_write().await {
                    Err(StoreError::Misconfigured(e)) => return Err(StoreError::Misconfigured(e)),
                    _ => return Ok(Ok(())),
                },
                Err(StoreError::Misconfigured(e)) => return Err(StoreError::Misconfigured(e)),
                Err(e) => {
                    let text = e.to_string().to_lowercase();
                    let hung_up = ["broken pipe", "connection reset", "connection closed", "unexpected eof"]
                        .iter()
                        .any(|sign| text.contains(sign));
                    last = Some((e, hung_up));
                    if !hung_up {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        match last.expect("at least one attempt") {
            // A store that is down refuses the connection or does not answer; one that
            // accepts it and hangs up on every TLS connection rejects this host's certificate
            // (or its lack of one).
            (e, true) if self.tls => Err(StoreError::Misconfigured(format!(
                "kv.certfile/kv.keyfile: the store hung up on every TLS connection, as a store that refuses this host's client certificate (or its lack of one) does ({e})"
            ))),
            (e, _) => Ok(Err(e)),
        }
    }
}

impl Etcd {
    /// A transaction that writes natd's probe key only if it holds a value it never holds.
    async fn check_write(&self) -> Result<Option<i64>, StoreError> {
        let key = super::migrated_key();
        let never = b"natd: this value is never written".to_vec();
        let put = Op::Put { key: key.clone(), value: never.clone(), lease: None };
        self.txn(&[Cond::ValueIs(key, never)], &[put]).await
    }
}

/// The error and its causes, in one line (tonic's TLS failures are two or three levels down).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// What an etcd-client error means to natd: the operator's settings are wrong (and
/// which one), the store is not there, or it refused this request.
fn store_error(error: etcd_client::Error) -> StoreError {
    let text = chain(&error);
    let lower = text.to_lowercase();
    let misconfigured = |option: &str, what: &str| StoreError::Misconfigured(format!("{option}: {what} ({text})"));
    if lower.contains("unknownissuer") || lower.contains("invalid peer certificate") {
        return misconfigured("kv.cacertfile", "the store's certificate is not signed by this CA");
    }
    if lower.contains("certificaterequired") || lower.contains("badcertificate") || lower.contains("unknownca") {
        return misconfigured("kv.certfile/kv.keyfile", "the store refused this host's client certificate");
    }
    if lower.contains("authentication failed") || lower.contains("invalid user id or password") {
        return misconfigured("kv.username/kv.passwordfile", "the store refused the user or password");
    }
    if lower.contains("user name is empty") {
        return misconfigured("kv.username/kv.passwordfile", "the store requires a user");
    }
    if lower.contains("etcdserver: permission denied") {
        return misconfigured("kv.username", "the store's user may not read and write natd's keys");
    }
    if lower.contains("corrupt message") || lower.contains("invalid content type") || lower.contains("http2 error") && lower.contains("frame") {
        return misconfigured("kv.cacertfile", "the store does not speak TLS, or speaks it where natd does not");
    }
    match &error {
        etcd_client::Error::GRpcStatus(status) => match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                StoreError::Unavailable(text)
            }
            // A connection that broke under the request.
            tonic::Code::Unknown if status.message() == "transport error" => StoreError::Unavailable(text),
            tonic::Code::OutOfRange if lower.contains("decoded message length too large") => {
                StoreError::Protocol(format!("the store's answer is larger than {MAX_RESPONSE_BYTES} bytes ({text})"))
            }
            _ => StoreError::Refused(text),
        },
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => StoreError::Unavailable(text),
        _ => StoreError::Protocol(text),
    }
}

fn compare(cond: &Cond) -> Compare {
    match cond {
        Cond::Absent(key) => Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
        Cond::ValueIs(key, value) => Compare::value(key.as_str(), CompareOp::Equal, value.clone()),
        Cond::Present(key) => Compare::create_revision(key.as_str(), CompareOp::Greater, 0),
        // A range compare holds when every key of the range satisfies it (an empty range does).
        Cond::UnchangedSince { prefix, revision } => {
            Compare::mod_revision(prefix.as_str(), CompareOp::Less, revision + 1).with_prefix()
        }
    }
}

fn operation(op: &Op) -> TxnOp {
    match op {
        Op::Put { key, value, lease } => TxnOp::put(
            key.as_str(),
            value.clone(),
            lease.map(|lease| PutOptions::new().with_lease(lease)),
        ),
        Op::Delete { key } => TxnOp::delete(key.as_str(), None),
        Op::DeletePrefix { prefix } => TxnOp::delete(prefix.as_str(), Some(DeleteOptions::new().with_prefix())),
    }
}

fn kv_of(kv: &etcd_client::KeyValue) -> Result<Kv, StoreError> {
    Ok(Kv {
        key: kv
            .key_str()
            .map_err(|_| StoreError::Protocol("a key that is not UTF-8".into()))?
            .to_string(),
        value: kv.value().to_vec(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    })
}

#[async_trait]
impl ClusterStore for Etcd {
    fn describe(&self) -> String {
        let scheme = if self.tls { "etcd+tls" } else { "etcd" };
        format!("{scheme}://{}", self.endpoints.join(","))
    }

    async fn range(&self, prefix: &str) -> Result<(i64, Vec<Kv>), StoreError> {
        let response = self
            .call("range", |client| async move {
                client
                    .kv_client()
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .get(prefix, Some(GetOptions::new().with_prefix()))
                    .await
            })
            .await?;
        let revision = response.header().map_or(0, |h| h.revision());
        let kvs = response.kvs().iter().map(kv_of).collect::<Result<_, _>>()?;
        Ok((revision, kvs))
    }

    async fn txn(&self, when: &[Cond], then: &[Op]) -> Result<Option<i64>, StoreError> {
        let txn = Txn::new()
            .when(when.iter().map(compare).collect::<Vec<_>>())
            .and_then(then.iter().map(operation).collect::<Vec<_>>());
        let response = self.call("txn", |client| async move { client.kv_client().txn(txn).await }).await?;
        Ok(response
            .succeeded()
            .then(|| response.header().map_or(0, |h| h.revision())))
    }

    async fn grant(&self, ttl: u64) -> Result<i64, StoreError> {
        let ttl = i64::try_from(ttl).unwrap_or(i64::MAX);
        let response = self
            .call("lease grant", |client| async move { client.lease_client().grant(ttl, None).await })
            .await?;
        Ok(response.id())
    }

    async fn keepalive(&self, lease: i64) -> Result<bool, StoreError> {
        // etcd-client sends one request on a new keepalive stream and reads its answer
        // (the stream ends when both halves are dropped); an answer with no TTL left is
        // its "lease not found".
        let client = self.client().await?;
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, async move {
            client.lease_client().keep_alive(lease).await.map(|_| ())
        })
        .await
        .map_err(|_| StoreError::Unavailable(format!("etcd lease keepalive: no answer within {REQUEST_TIMEOUT:?}")))?;
        match answer {
            Ok(()) => Ok(true),
            Err(etcd_client::Error::LeaseKeepAliveError(message)) if message.contains("not found") => Ok(false),
            Err(e) => Err(store_error(e)),
        }
    }

    async fn revoke(&self, lease: i64) -> Result<(), StoreError> {
        self.call("lease revoke", |client| async move { client.lease_client().revoke(lease).await })
            .await?;
        Ok(())
    }

    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<Box<dyn Watch>, StoreError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from_revision)
            .with_prev_key();
        let stream = self
            .call("watch", |client| async move {
                client
                    .watch_client()
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .watch(prefix, Some(options))
                    .await
            })
            .await?;
        Ok(Box::new(EtcdWatch { stream }))
    }
}

struct EtcdWatch {
    stream: WatchStream,
}

#[async_trait]
impl Watch for EtcdWatch {
    async fn next(&mut self) -> Result<(i64, Vec<Event>), StoreError> {
        loop {
            let Some(response) = self.stream.message().await.map_err(store_error)? else {
                return Err(StoreError::Unavailable("etcd watch: the stream ended".into()));
            };
            if response.canceled() {
                if response.compact_revision() > 0 {
                    return Err(StoreError::Compacted(response.compact_revision()));
                }
                return Err(StoreError::Unavailable(format!(
                    "etcd watch canceled: {}",
                    response.cancel_reason()
                )));
            }
            if response.events().is_empty() {
                continue; // `created` and progress notifications.
            }
            let events = response
                .events()
                .iter()
                .filter_map(|event| {
                    let kv = event.kv()?;
                    Some(kv_of(kv).map(|kv| match event.event_type() {
                        EventType::Delete => Event::Delete(kv.key),
                        EventType::Put => Event::Put(kv),
                    }))
                })
                .collect::<Result<_, StoreError>>()?;
            return Ok((response.header().map_or(0, |h| h.revision()), events));
        }
    }
}
