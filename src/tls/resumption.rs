//! Upstream TLS session resumption: each server of a pool (one address, DNS ones included) keeps
//! its own small store of sessions, so that a pool to one endpoint pays a full handshake rarely.
//!
//! rustls's default is one store of 256 sessions keyed by server name, shared by a whole config.
//! Every address behind one name has the same key there, and the front ends behind an Azure
//! name need not share ticket keys: a ticket from one would be offered to another, refused, and
//! the next full handshake would overwrite the first's tickets. One store per server keeps them
//! apart, bounds each, and goes away with the server (an address DNS removed, a pool replaced
//! by a reload: sessions made under the old trust settings are never offered under new ones).
//!
//! A store holds up to `capacity` TLS 1.3 tickets (single use: each resumption takes one, the
//! server sends fresh ones on the new connection), one TLS 1.2 session, and the key-exchange
//! group the server chose. It is locked once or twice per handshake, by the worker doing that
//! handshake; the handshake costs far more, and the lock is the server's alone.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use rustls::client::{
    ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, NamedGroup};

/// Sessions per server unless `session_cache` says otherwise: OpenSSL-based servers send two
/// tickets after a full handshake and one after each resumption, so this covers a burst of 8
/// connects to one server at once; the rest pay a full handshake, and bring tickets back.
pub const DEFAULT_SESSIONS: usize = 8;

/// A pool's client config made for one server: its own session store of `capacity` sessions,
/// or no resumption at all when `capacity` is 0.
pub fn server_client_config(pool: &ClientConfig, capacity: usize) -> Arc<ClientConfig> {
    let mut config = pool.clone();
    config.resumption = if capacity == 0 {
        Resumption::disabled()
    } else {
        Resumption::store(Arc::new(ServerSessions::new(capacity)))
    };
    Arc::new(config)
}

/// One server's sessions. A server has one name (the pool's `sni`, its host name, or its
/// address), so the store keeps the sessions of one name: another name (never expected) starts
/// it afresh rather than growing it.
#[derive(Debug)]
pub struct ServerSessions {
    capacity: usize,
    slot: Mutex<Option<Slot>>,
}

#[derive(Debug)]
struct Slot {
    name: ServerName<'static>,
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    /// Oldest first.
    tls13: VecDeque<Tls13ClientSessionValue>,
}

impl ServerSessions {
    /// `capacity`: TLS 1.3 tickets kept, at least 1.
    pub fn new(capacity: usize) -> ServerSessions {
        ServerSessions {
            capacity: capacity.max(1),
            slot: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Slot>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The slot of `name`, made (or remade, for another name) if need be.
    fn edit<T>(&self, name: ServerName<'static>, change: impl FnOnce(&mut Slot) -> T) -> T {
        let mut slot = self.lock();
        let slot = match &mut *slot {
            Some(s) if s.name == name => s,
            other => other.insert(Slot {
                name,
                kx_hint: None,
                tls12: None,
                tls13: VecDeque::new(),
            }),
        };
        change(slot)
    }

    /// Reads the slot of `name`, if it is this store's name.
    fn read<T>(
        &self,
        name: &ServerName<'_>,
        read: impl FnOnce(&mut Slot) -> Option<T>,
    ) -> Option<T> {
        self.lock()
            .as_mut()
            .filter(|s| s.name == *name)
            .and_then(read)
    }

    /// TLS 1.3 tickets held now.
    pub fn tickets(&self) -> usize {
        self.lock().as_ref().map_or(0, |s| s.tls13.len())
    }
}

impl ClientSessionStore for ServerSessions {
    fn set_kx_hint(&self, name: ServerName<'static>, group: NamedGroup) {
        self.edit(name, |s| s.kx_hint = Some(group));
    }

    fn kx_hint(&self, name: &ServerName<'_>) -> Option<NamedGroup> {
        self.read(name, |s| s.kx_hint)
    }

    fn set_tls12_session(&self, name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.edit(name, |s| s.tls12 = Some(value));
    }

    fn tls12_session(&self, name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.read(name, |s| s.tls12.clone())
    }

    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.read(name, |s| s.tls12.take());
    }

    fn insert_tls13_ticket(&self, name: ServerName<'static>, value: Tls13ClientSessionValue) {
        let capacity = self.capacity;
        self.edit(name, |s| {
            if s.tls13.len() == capacity {
                s.tls13.pop_front();
            }
            s.tls13.push_back(value);
        });
    }

    fn take_tls13_ticket(&self, name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        // The newest: the least likely to have expired.
        self.read(name, |s| s.tls13.pop_back())
    }
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::{ClientConnection, HandshakeKind, RootCertStore, ServerConfig, ServerConnection};

    use super::*;

    /// A TLS 1.3 server for `origin.test` that sends `tickets` tickets per handshake, and a
    /// client config trusting it.
    fn peers(tickets: usize) -> (Arc<ServerConfig>, ClientConfig) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["origin.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der: CertificateDer<'static> = cert.der().clone();
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut server = ServerConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], private)
            .unwrap();
        server.ticketer = rustls::crypto::ring::Ticketer::new().unwrap();
        server.send_tls13_tickets = tickets;
        let mut roots = RootCertStore::empty();
        roots.add(der).unwrap();
        let client = ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), client)
    }

    /// Moves TLS records both ways in memory until neither side has more to say.
    fn exchange(client: &mut ClientConnection, server: &mut ServerConnection) {
        loop {
            let mut moved = false;
            let mut bytes = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut bytes).unwrap();
            }
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                moved = true;
                server.read_tls(&mut rest).unwrap();
                server.process_new_packets().unwrap();
            }
            bytes.clear();
            while server.wants_write() {
                server.write_tls(&mut bytes).unwrap();
            }
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                moved = true;
                client.read_tls(&mut rest).unwrap();
                client.process_new_packets().unwrap();
            }
            if !moved {
                return;
            }
        }
    }

    /// One connection from `client` to `server` under `name`: how its handshake went.
    fn connect(
        client: &Arc<ClientConfig>,
        server: &Arc<ServerConfig>,
        name: &str,
    ) -> HandshakeKind {
        let name = ServerName::try_from(name.to_string()).unwrap();
        let mut c = ClientConnection::new(Arc::clone(client), name).unwrap();
        let mut s = ServerConnection::new(Arc::clone(server)).unwrap();
        exchange(&mut c, &mut s);
        assert!(!c.is_handshaking() && !s.is_handshaking());
        c.handshake_kind().unwrap()
    }

    #[test]
    fn a_server_resumes_from_its_own_bounded_store() {
        let (server, pool) = peers(4);
        let config = server_client_config(&pool, 2);
        assert_eq!(
            connect(&config, &server, "origin.test"),
            HandshakeKind::Full
        );
        for _ in 0..5 {
            assert_eq!(
                connect(&config, &server, "origin.test"),
                HandshakeKind::Resumed
            );
        }
        // Another server of the same pool has a store of its own: its first handshake is full.
        let other = server_client_config(&pool, 2);
        assert_eq!(connect(&other, &server, "origin.test"), HandshakeKind::Full);
    }

    #[test]
    fn the_store_keeps_at_most_its_capacity_and_one_name() {
        let (server, pool) = peers(4);
        let store = Arc::new(ServerSessions::new(3));
        let mut config = pool.clone();
        config.resumption = Resumption::store(Arc::clone(&store) as Arc<dyn ClientSessionStore>);
        let config = Arc::new(config);
        assert_eq!(
            connect(&config, &server, "origin.test"),
            HandshakeKind::Full
        );
        assert_eq!(store.tickets(), 3, "4 tickets sent, 3 kept");
        assert_eq!(
            connect(&config, &server, "origin.test"),
            HandshakeKind::Resumed
        );
        assert_eq!(store.tickets(), 3, "one taken, 4 more sent, 3 kept");

        let other = ServerName::try_from("other.test").unwrap();
        assert!(store.take_tls13_ticket(&other).is_none());
        assert!(store.kx_hint(&other).is_none());
        assert_eq!(store.tickets(), 3, "asking for another name takes nothing");
        store.set_kx_hint(other.clone(), NamedGroup::X25519);
        assert_eq!(store.tickets(), 0, "another name starts the store afresh");
        assert_eq!(store.kx_hint(&other), Some(NamedGroup::X25519));
    }

    #[test]
    fn zero_sessions_means_no_resumption() {
        let (server, pool) = peers(4);
        let config = server_client_config(&pool, 0);
        for _ in 0..3 {
            assert_eq!(
                connect(&config, &server, "origin.test"),
                HandshakeKind::Full
            );
        }
    }
}
