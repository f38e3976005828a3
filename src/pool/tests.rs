use super::*;
use crate::config::{Balance, Keepalive, PoolConfig, ServerAddress, ServerConfig};

fn pool(balance: Balance, servers: &[(u32, bool, Option<u32>)]) -> Pool {
    let config = PoolConfig {
        name: "p".into(),
        balance,
        connect_timeout: Duration::from_secs(1),
        retries: 2,
        keepalive: Keepalive {
            idle: None,
            interval: Duration::from_secs(1),
            count: 1,
        },
        send_proxy: crate::config::SendProxy::Off,
        source: None,
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
    };
    Pool::build(&config)
}

fn client(n: u32) -> IpAddr {
    IpAddr::from((0x0a00_0000u32 + n).to_be_bytes())
}

fn pick_index(pool: &Pool, c: IpAddr) -> usize {
    pool.pick(c, &[]).map(|(i, _)| i).expect("a server")
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
    let (first, lease) = pool.pick(client(1), &[]).unwrap();
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
    for server in pool.servers() {
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
    pool.servers()[1].set_up(false);
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
    assert_eq!((a.0, b.0, c.0), (0, 0, 1));
}

#[test]
fn backups_serve_only_when_no_primary_can() {
    let pool = pool(Balance::RoundRobin, &[(1, false, Some(1)), (1, true, None)]);
    let primary = pool.pick(client(1), &[]).unwrap();
    assert_eq!(primary.0, 0);
    assert_eq!(
        pick_index(&pool, client(1)),
        1,
        "primary full: backup serves"
    );
    drop(primary);
    assert_eq!(pick_index(&pool, client(1)), 0, "primary back");
    pool.servers()[0].set_up(false);
    assert_eq!(pick_index(&pool, client(1)), 1);
    pool.servers()[1].set_up(false);
    assert!(pool.pick(client(1), &[]).is_none(), "nothing up: no server");
}

#[test]
fn retries_avoid_servers_already_tried() {
    let pool = pool(
        Balance::RoundRobin,
        &[(1, false, None), (1, false, None), (1, true, None)],
    );
    assert_eq!(pool.pick(client(1), &[0]).unwrap().0, 1);
    assert_eq!(
        pool.pick(client(1), &[0, 1]).unwrap().0,
        2,
        "untried backup before a repeat"
    );
    assert!(
        pool.pick(client(1), &[0, 1, 2]).is_some(),
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
