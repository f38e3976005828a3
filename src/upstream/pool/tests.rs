use super::*;
use crate::relay::sockopt::Keepalive;
use crate::upstream::dns::DnsConfig;
use crate::upstream::health::CheckKind;
use crate::upstream::health::HealthConfig;
use crate::upstream::pool::balance::Balance;
use crate::upstream::pool::PoolConfig;
use crate::upstream::pool::ServerAddress;
use crate::upstream::pool::ServerConfig;

fn pool(balance: Balance, servers: &[(u32, bool, Option<u32>)]) -> Pool {
    Pool::build(&pool_config(balance, servers), None)
}

fn pool_config(balance: Balance, servers: &[(u32, bool, Option<u32>)]) -> PoolConfig {
    PoolConfig {
        name: "p".into(),
        balance,
        connect_timeout: Duration::from_secs(1),
        retries: 2,
        keepalive: Keepalive {
            idle: None,
            interval: Duration::from_secs(1),
            count: 1,
        },
        send_proxy: crate::protocol::proxy_protocol::SendProxy::Off,
        sources: Vec::new(),
        servers: servers
            .iter()
            .enumerate()
            .map(|(i, &(weight, backup, max_connections))| ServerConfig {
                name: format!("s{i}"),
                address: ServerAddress::Ip(SocketAddr::from(([127, 0, 0, 1], 10000 + i as u16))),
                weight,
                backup,
                max_connections,
            })
            .collect(),
        slow_start: Duration::ZERO,
        on_down: OnDown::Keep,
        dns: DnsConfig {
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(300),
            hold: Duration::from_secs(300),
            removed_grace: None,
            timeout: Duration::from_secs(2),
            nameservers: Vec::new(),
            require_private: false,
            family: Default::default(),
        },
        health: None,
        tls: None,
    }
}

fn health(passive_fall: u32) -> HealthConfig {
    HealthConfig {
        check: CheckKind::Tcp,
        interval: Duration::from_secs(2),
        fast_interval: Duration::from_secs(2),
        timeout: Duration::from_millis(200),
        rise: 2,
        fall: 3,
        jitter: Duration::ZERO,
        init_state: InitState::Down,
        passive_fall,
        tls: None,
        http: None,
    }
}

/// The index in the pool's current set of the server a lease is on.
fn index(pool: &Pool, lease: &ServerLease) -> usize {
    let id = lease.server().id;
    pool.servers()
        .iter()
        .position(|s| s.id == id)
        .expect("leased server in the set")
}

fn id(pool: &Pool, index: usize) -> ServerId {
    pool.servers()[index].id
}

fn client(n: u32) -> IpAddr {
    IpAddr::from((0x0a00_0000u32 + n).to_be_bytes())
}

fn pick_index(pool: &Pool, c: IpAddr) -> usize {
    let lease = pool.pick(c, &[]).expect("a server");
    index(pool, &lease)
}

#[test]
fn smooth_round_robin_follows_weights_exactly_and_smoothly() {
    let pool = pool(
        Balance::RoundRobin,
        &[(5, false, None), (1, false, None), (1, false, None)],
    );
    let picks: Vec<usize> = (0..7).map(|_| pick_index(&pool, client(1))).collect();
    // nginx's example sequence for weights 5,1,1: a a b a c a a
    assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
}

#[test]
fn least_connections_prefers_the_idle_server_relative_to_weight() {
    let pool = pool(
        Balance::LeastConnections,
        &[(1, false, None), (1, false, None)],
    );
    let lease = pool.pick(client(1), &[]).unwrap();
    let first = index(&pool, &lease);
    for _ in 0..10 {
        assert_ne!(
            pick_index(&pool, client(1)),
            first,
            "busy server chosen over idle one"
        );
    }
    drop(lease);
}

#[test]
fn random_two_balances_load() {
    let pool = pool(
        Balance::RandomTwo,
        &[(1, false, None), (1, false, None), (1, false, None)],
    );
    let leases: Vec<_> = (0..300)
        .map(|_| pool.pick(client(1), &[]).unwrap())
        .collect();
    for server in pool.servers().iter() {
        let active = server.active();
        assert!((80..=120).contains(&active), "uneven: {active}");
    }
    drop(leases);
    assert!(pool.servers().iter().all(|s| s.active() == 0));
}

#[test]
fn source_hash_is_sticky_and_moves_only_the_removed_servers_clients() {
    let pool = pool(
        Balance::SourceHash,
        &[(1, false, None), (1, false, None), (1, false, None)],
    );
    let before: Vec<usize> = (0..1000).map(|n| pick_index(&pool, client(n))).collect();
    let again: Vec<usize> = (0..1000).map(|n| pick_index(&pool, client(n))).collect();
    assert_eq!(before, again);
    let mut counts = [0; 3];
    before.iter().for_each(|&i| counts[i] += 1);
    assert!(
        counts.iter().all(|&c| (250..=420).contains(&c)),
        "skewed: {counts:?}"
    );
    pool.set_up(&pool.servers()[1], false);
    for n in 0..1000 {
        let now = pick_index(&pool, client(n));
        if before[n as usize] != 1 {
            assert_eq!(now, before[n as usize], "client {n} moved without cause");
        } else {
            assert_ne!(now, 1);
        }
    }
}

#[test]
fn first_fills_servers_in_order() {
    let pool = pool(Balance::First, &[(1, false, Some(2)), (1, false, None)]);
    let a = pool.pick(client(1), &[]).unwrap();
    let b = pool.pick(client(1), &[]).unwrap();
    let c = pool.pick(client(1), &[]).unwrap();
    assert_eq!(
        (index(&pool, &a), index(&pool, &b), index(&pool, &c)),
        (0, 0, 1)
    );
}

#[test]
fn backups_serve_only_when_no_primary_can() {
    let pool = pool(Balance::RoundRobin, &[(1, false, Some(1)), (1, true, None)]);
    let primary = pool.pick(client(1), &[]).unwrap();
    assert_eq!(index(&pool, &primary), 0);
    assert_eq!(
        pick_index(&pool, client(1)),
        1,
        "primary full: backup serves"
    );
    drop(primary);
    assert_eq!(pick_index(&pool, client(1)), 0, "primary back");
    pool.set_up(&pool.servers()[0], false);
    assert_eq!(pick_index(&pool, client(1)), 1);
    pool.set_up(&pool.servers()[1], false);
    assert!(pool.pick(client(1), &[]).is_none(), "nothing up: no server");
}

#[test]
fn retries_avoid_servers_already_tried() {
    let pool = pool(
        Balance::RoundRobin,
        &[(1, false, None), (1, false, None), (1, true, None)],
    );
    let (a, b, c) = (id(&pool, 0), id(&pool, 1), id(&pool, 2));
    assert_eq!(index(&pool, &pool.pick(client(1), &[a]).unwrap()), 1);
    assert_eq!(
        index(&pool, &pool.pick(client(1), &[a, b]).unwrap()),
        2,
        "untried backup before a repeat"
    );
    assert!(
        pool.pick(client(1), &[a, b, c]).is_some(),
        "all tried: repeat one"
    );
}

#[test]
fn per_server_limit_is_never_exceeded() {
    let pool = pool(Balance::LeastConnections, &[(1, false, Some(3))]);
    let leases: Vec<_> = (0..3).map(|_| pool.pick(client(1), &[]).unwrap()).collect();
    assert!(pool.pick(client(1), &[]).is_none());
    drop(leases);
    assert!(pool.pick(client(1), &[]).is_some());
}

#[test]
fn slow_start_ramps_the_effective_weight_of_a_server_coming_back() {
    let mut config = pool_config(Balance::RoundRobin, &[(1, false, None), (1, false, None)]);
    config.slow_start = Duration::from_millis(1000);
    let pool = pool_with(config);
    let servers = pool.servers();
    let weight = |s: &Server| s.effective_weight(&mut Clock::default());
    assert_eq!(weight(&servers[1]), WEIGHT_SCALE, "at start: full");
    pool.set_up(&servers[1], false);
    pool.set_up(&servers[1], true);
    let early = weight(&servers[1]);
    assert!(early < WEIGHT_SCALE / 10, "just back: {early}");
    // Linear: about half the weight half way through (the sleep measures the ramp, it does
    // not wait for anything).
    std::thread::sleep(Duration::from_millis(500));
    let half = weight(&servers[1]);
    assert!((450..=750).contains(&half), "half way: {half}");
    let picks: Vec<usize> = (0..1000).map(|_| pick_index(&pool, client(1))).collect();
    let share = picks.iter().filter(|&&i| i == 1).count();
    assert!(
        (250..=450).contains(&share),
        "round-robin share at about half weight: {share}"
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(weight(&servers[1]), WEIGHT_SCALE);
    assert_eq!(
        servers[1].ramp_start.load(Ordering::Relaxed),
        0,
        "ramp over"
    );
}

fn pool_with(config: PoolConfig) -> Pool {
    Pool::build(&config, None)
}

#[test]
fn passive_failures_take_a_server_down_and_a_success_resets_the_count() {
    let mut config = pool_config(Balance::RoundRobin, &[(1, false, None), (1, false, None)]);
    config.health = Some(health(3));
    config.health.as_mut().unwrap().init_state = InitState::Up;
    let pool = pool_with(config);
    let s = Arc::clone(&pool.servers()[0]);
    pool.record_connect(&s, AttemptResult::Refused);
    pool.record_connect(&s, AttemptResult::Timeout);
    pool.record_connect(&s, AttemptResult::Ok);
    pool.record_connect(&s, AttemptResult::Refused);
    pool.record_connect(&s, AttemptResult::Refused);
    assert!(s.is_usable(), "two in a row are not three");
    pool.record_connect(&s, AttemptResult::Refused);
    assert!(!s.is_usable());
    let status = s.status();
    assert_eq!(status.shown_state(), "down");
    assert!(
        status
            .shown_reason()
            .unwrap()
            .contains("3 connects in a row failed"),
        "{:?}",
        status.shown_reason()
    );
    // Checks bring it back after rise good ones.
    assert!(pool.record_check(&s, 0, Ok(()), Duration::from_millis(1)));
    pool.record_check(&s, 0, Ok(()), Duration::from_millis(1));
    assert!(s.is_usable());
}

#[test]
fn passive_detection_is_off_without_health_checks() {
    let pool = pool(Balance::RoundRobin, &[(1, false, None)]);
    let s = Arc::clone(&pool.servers()[0]);
    for _ in 0..10 {
        pool.record_connect(&s, AttemptResult::Refused);
    }
    assert!(s.is_usable());
}

#[test]
fn servers_await_their_first_check_unless_init_state_is_up() {
    let mut config = pool_config(Balance::RoundRobin, &[(1, false, None)]);
    config.health = Some(health(3));
    let pool = pool_with(config.clone());
    assert!(pool.pick(client(1), &[]).is_none(), "unknown: no traffic");
    assert_eq!(pool.pending.load(Ordering::Relaxed), 1);
    pool.record_check(&pool.servers()[0], 0, Ok(()), Duration::from_millis(1));
    assert!(
        pool.pick(client(1), &[]).is_some(),
        "one good check is enough"
    );
    assert_eq!(pool.pending.load(Ordering::Relaxed), 0);

    config.health.as_mut().unwrap().init_state = InitState::Up;
    let pool = pool_with(config);
    assert!(pool.pick(client(1), &[]).is_some());
}

#[tokio::test]
async fn a_client_waits_for_the_first_checks_but_not_longer_than_the_check_timeout() {
    let mut config = pool_config(Balance::RoundRobin, &[(1, false, None)]);
    config.health = Some(health(3));
    let pool = Arc::new(pool_with(config));
    let checker = Arc::clone(&pool);
    // On this current-thread runtime the check answers exactly when the client has started
    // waiting (no timing involved): the client must get the server.
    tokio::spawn(async move {
        let server = Arc::clone(&checker.servers()[0]);
        checker.record_check(&server, 0, Ok(()), Duration::from_millis(1));
    });
    assert!(pool.pick_or_wait(client(1), &[]).await.is_some());

    // Nothing ever answers: the wait ends at the check timeout (200ms).
    let mut config = pool_config(Balance::RoundRobin, &[(1, false, None)]);
    config.health = Some(health(3));
    let pool = pool_with(config);
    let started = std::time::Instant::now();
    assert!(pool.pick_or_wait(client(1), &[]).await.is_none());
    let waited = started.elapsed();
    assert!(
        (Duration::from_millis(190)..Duration::from_secs(2)).contains(&waited),
        "{waited:?}"
    );
}

#[test]
fn draining_stops_new_connections_and_ready_restores_them() {
    let pool = pool(Balance::RoundRobin, &[(1, false, None), (1, false, None)]);
    assert_eq!(pool.set_draining("s0", true), Some(1));
    assert_eq!(pool.set_draining("s0", true), Some(0), "already draining");
    assert!((0..20).all(|_| pick_index(&pool, client(1)) == 1));
    assert_eq!(pool.servers()[0].status().shown_state(), "draining");
    assert_eq!(pool.set_draining("s0", false), Some(1));
    assert!((0..20).any(|_| pick_index(&pool, client(1)) == 0));
    assert_eq!(pool.set_draining("nope", true), None);
}

#[tokio::test]
async fn dns_answers_add_and_remove_servers_and_tried_survives_a_change() {
    let mut config = pool_config(Balance::RoundRobin, &[(1, false, None)]);
    config.servers[0].address = ServerAddress::Name {
        host: "svc.test".into(),
        port: 443,
    };
    let pool = Arc::new(pool_with(config));
    assert!(pool.servers().is_empty(), "nothing before the first answer");
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let gone = Reason::new("dns", "DNS gone");
    pool.set_addresses(0, &[ip("10.0.0.1"), ip("10.0.0.2")], &gone);
    assert_eq!(pool.servers().len(), 2);
    let first = pool.pick(client(1), &[]).unwrap();
    let first_id = first.server().id;
    // 10.0.0.1 leaves the answer while a connection to it is open (or .2, whichever).
    let keep = if first.server().addr.ip() == ip("10.0.0.1") {
        ip("10.0.0.2")
    } else {
        ip("10.0.0.1")
    };
    pool.set_addresses(0, &[keep, ip("10.0.0.3")], &gone);
    let servers = pool.servers();
    assert_eq!(
        servers.len(),
        3,
        "the removed one stays listed while in use"
    );
    let removed = servers.iter().find(|s| s.id == first_id).unwrap();
    assert_eq!(removed.status().shown_reason().as_deref(), Some("DNS gone"));
    for _ in 0..20 {
        let lease = pool.pick(client(1), &[first_id]).unwrap();
        assert_ne!(
            lease.server().id,
            first_id,
            "a removed server took a connection"
        );
    }
    drop(first);
    pool.set_addresses(0, &[keep, ip("10.0.0.3")], &gone);
    assert_eq!(pool.servers().len(), 2, "gone once idle");
    // A drained name's new addresses are draining too.
    assert_eq!(pool.set_draining("s0", true), Some(2));
    pool.set_addresses(0, &[keep, ip("10.0.0.3"), ip("10.0.0.9")], &gone);
    assert!(pool.servers().iter().all(|s| !s.is_usable()));
    assert!(pool.pick(client(1), &[]).is_none());
    assert!(pool.servers().windows(2).all(|w| w[0].addr < w[1].addr));
}

#[test]
fn per_source_counts_go_on_across_a_reload_while_the_sources_stay() {
    use crate::upstream::egress::SourceClaim;
    let mut config = pool_config(Balance::RoundRobin, &[(1, false, None)]);
    config.sources = vec!["10.0.1.10".parse().unwrap(), "10.0.1.11".parse().unwrap()];
    let old = Pool::build(&config, None);
    let claim = SourceClaim::take(&old.servers()[0], 1);
    let new = Pool::build(&config, Some(&old));
    let server = &new.servers()[0];
    assert_eq!((server.sources.active(0), server.sources.active(1)), (0, 1));
    assert_eq!(server.sources.next(0), Some(0), "the used source last");
    drop(claim);
    assert_eq!(server.sources.active(1), 0);

    // Other sources: counted afresh.
    let claim = SourceClaim::take(&new.servers()[0], 0);
    config.sources.pop();
    let changed = Pool::build(&config, Some(&new));
    assert_eq!(changed.servers()[0].sources.active(0), 0);
    drop(claim);
}
