//! Redis ACL users: one per tenant for its backend workers, and a least-privilege user for the
//! server itself (`kryonix-server acl plan|apply|check`).
//!
//! A tenant's worker (`tenant_{tenant}_worker`) may consume, acknowledge and trim only its own
//! tenant's up streams: the key pattern `tenant:{tenant}:*` and the stream commands a consumer
//! group needs, nothing else (no `KEYS`, `FLUSHALL`, `CONFIG`, `DEBUG`, no other tenant's keys).
//! The server's user may run exactly the commands the server sends (`SERVER_COMMANDS`) on every
//! tenant's keys. Redis 7 ACLs cannot restrict logical databases, so `SELECT` is allowed and the
//! key pattern is the isolation.
//!
//! Passwords are given as files and sent as SHA-256 hashes (`#<hex>`), so plans can be printed
//! and reviewed. `apply` runs `ACL SETUSER` on every node of the deployment — a standalone
//! Redis and its replicas, a Sentinel's primary and its replicas, every node of a Cluster —
//! because ACLs are per node. `check` asks each node with `ACL DRYRUN` whether the users may do
//! what they must and may not do what they must not.

use kryonix_protocol::TenantId;
use redis::{ConnectionInfo, IntoConnectionInfo};
use sha2::{Digest, Sha256};

use super::access::{self, RedisAccess};
use super::info::parse_info;
use super::topology::{Topology, ask_primary, parse};
use crate::store::StoreError;

/// What a tenant's worker may run (a consumer group's commands), besides connecting.
pub const WORKER_COMMANDS: &[&str] = &[
    "xreadgroup",
    "xack",
    "xtrim",
    "xdel",
    "xgroup|create",
    "xgroup|createconsumer",
    "xgroup|delconsumer",
    "xgroup|setid",
    "xinfo|stream",
    "xinfo|groups",
    "xinfo|consumers",
    "xpending",
    "xclaim",
    "xautoclaim",
    "xrange",
    "xrevrange",
    "xlen",
];

/// What the server itself runs (its code and its Lua scripts), besides connecting.
pub const SERVER_COMMANDS: &[&str] = &[
    "get",
    "set",
    "del",
    "exists",
    "pttl",
    "pexpire",
    "hmget",
    "hset",
    "type",
    "xadd",
    "xrange",
    "watch",
    "unwatch",
    "multi",
    "exec",
    "discard",
    "wait",
    "evalsha",
    "eval",
    "script|load",
    "time",
    "info",
    "cluster|slots",
    "cluster|info",
    "cluster|shards",
    "cluster|nodes",
];

/// What every user needs to connect and select its database. (Not `CLIENT SETINFO`, which
/// redis-rs sends but tolerates refused, and which Redis 7.0 does not know.)
const CONNECTION_COMMANDS: &[&str] = &[
    "ping",
    "select",
    "auth",
    "hello",
    "client|setname",
    "readonly",
];

/// One ACL user as `ACL SETUSER` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclUser {
    pub name: String,
    pub rules: Vec<String>,
}

impl AclUser {
    /// The `ACL SETUSER …` line (passwords appear only as hashes).
    pub fn setuser_line(&self) -> String {
        format!("ACL SETUSER {} {}", self.name, self.rules.join(" "))
    }
}

/// `#<hex SHA-256>`: how ACL rules carry a password without showing it.
pub fn password_rule(password: &str) -> String {
    let digest = Sha256::digest(password.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("#{hex}")
}

fn user(name: String, password: &str, keys: &str, commands: &[&str]) -> AclUser {
    let mut rules = vec![
        "reset".to_owned(),
        "on".to_owned(),
        password_rule(password),
        format!("~{keys}"),
        "resetchannels".to_owned(),
        "-@all".to_owned(),
    ];
    rules.extend(
        CONNECTION_COMMANDS
            .iter()
            .chain(commands)
            .map(|c| format!("+{c}")),
    );
    AclUser { name, rules }
}

/// The user of `tenant`'s backend workers: `tenant_{tenant}_worker`.
pub fn worker_user(tenant: &TenantId, password: &str) -> AclUser {
    user(
        format!("tenant_{}_worker", tenant.as_str()),
        password,
        &format!("tenant:{}:*", tenant.as_str()),
        WORKER_COMMANDS,
    )
}

/// The server's own least-privilege user.
pub fn server_user(name: &str, password: &str) -> AclUser {
    user(name.to_owned(), password, "tenant:*", SERVER_COMMANDS)
}

/// Every data node of the deployment, as connection settings: the nodes the topology names,
/// their replicas (from `INFO replication`), and every node of a Cluster (`CLUSTER NODES`).
pub async fn nodes(
    topology: &Topology,
    access: &RedisAccess,
) -> Result<Vec<ConnectionInfo>, StoreError> {
    let mut bases: Vec<ConnectionInfo> = match topology {
        Topology::Standalone {
            cache_url,
            sync_url,
            groups,
        } => {
            let mut v = vec![parse(cache_url)?];
            if let Some(sync) = sync_url {
                v.push(parse(sync)?);
            }
            // The policy groups' instances serve the server too: its user must exist there.
            for (_, url) in groups.configured() {
                v.push(parse(url)?);
            }
            v
        }
        Topology::Sentinel {
            sentinels,
            master,
            node_url,
        } => {
            let primary = ask_primary(access, sentinels, master).await?;
            let node = parse(node_url.as_deref().unwrap_or("redis://127.0.0.1:6379"))?;
            vec![access::at(&node, &primary).map_err(StoreError::Unavailable)?]
        }
        Topology::Cluster { seeds } => {
            let seed = parse(
                seeds
                    .first()
                    .ok_or_else(|| StoreError::Unavailable("no cluster node given".into()))?,
            )?;
            let text: String = query(access, &seed, redis::cmd("CLUSTER").arg("NODES")).await?;
            let mut all = Vec::new();
            for line in text.lines() {
                // `<id> <ip:port@bus[,hostname]> <flags> …`; failed nodes are skipped.
                let mut fields = line.split_whitespace();
                let (Some(_), Some(addr), Some(flags)) =
                    (fields.next(), fields.next(), fields.next())
                else {
                    continue;
                };
                if flags.contains("fail") || flags.contains("noaddr") {
                    continue;
                }
                let addr = addr.split(['@', ',']).next().unwrap_or_default();
                all.push(access::at(&seed, addr).map_err(StoreError::Internal)?);
            }
            return Ok(dedupe(all));
        }
    };
    let mut replicas = Vec::new();
    for base in &bases {
        let text: String = query(access, base, redis::cmd("INFO").arg("replication")).await?;
        for (field, value) in parse_info(&text) {
            // `slave0:ip=10.0.0.2,port=6380,state=online,…`
            if !field.starts_with("slave") {
                continue;
            }
            let part = |name: &str| {
                value
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                    .map(str::to_owned)
            };
            if let (Some(ip), Some(port)) = (part("ip"), part("port")) {
                replicas
                    .push(access::at(base, &format!("{ip}:{port}")).map_err(StoreError::Internal)?);
            }
        }
    }
    bases.extend(replicas);
    Ok(dedupe(bases))
}

fn dedupe(nodes: Vec<ConnectionInfo>) -> Vec<ConnectionInfo> {
    let mut seen = std::collections::HashSet::new();
    nodes
        .into_iter()
        .filter(|n| seen.insert(n.addr().to_string()))
        .collect()
}

async fn query<T: redis::FromRedisValue>(
    access: &RedisAccess,
    node: &ConnectionInfo,
    cmd: &redis::Cmd,
) -> Result<T, StoreError> {
    let client = access
        .client(node.clone())
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .map_err(super::errors::connect_error)?;
    cmd.query_async(&mut con)
        .await
        .map_err(|e| StoreError::Unavailable(format!("{}: {e}", node.addr())))
}

/// Runs `ACL SETUSER` for `users` on every node; returns the addresses done.
pub async fn apply(
    access: &RedisAccess,
    nodes: &[ConnectionInfo],
    users: &[AclUser],
) -> Result<Vec<String>, StoreError> {
    let mut done = Vec::new();
    for node in nodes {
        for user in users {
            let mut cmd = redis::cmd("ACL");
            cmd.arg("SETUSER").arg(&user.name).arg(&user.rules);
            let () = query(access, node, &cmd).await?;
        }
        done.push(node.addr().to_string());
    }
    Ok(done)
}

/// One `ACL DRYRUN` expectation: `user` may (or may not) run `command`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    pub allowed: bool,
    pub command: Vec<String>,
}

fn expect(allowed: bool, command: &[&str]) -> Expectation {
    Expectation {
        allowed,
        command: command.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// What a tenant's worker must and must not be able to do.
pub fn worker_expectations(tenant: &TenantId) -> Vec<Expectation> {
    let own = format!(
        "tenant:{}:mobile_sync:up:{{{}:p0}}:t1",
        tenant.as_str(),
        tenant.as_str()
    );
    let other = "tenant:someone-else:mobile_sync:up:{someone-else:p0}:t1";
    vec![
        expect(
            true,
            &["XREADGROUP", "GROUP", "backend", "w1", "STREAMS", &own, ">"],
        ),
        expect(true, &["XACK", &own, "backend", "1-0"]),
        expect(true, &["XTRIM", &own, "MINID", "0"]),
        expect(true, &["XGROUP", "CREATE", &own, "backend", "0"]),
        expect(
            false,
            &[
                "XREADGROUP",
                "GROUP",
                "backend",
                "w1",
                "STREAMS",
                other,
                ">",
            ],
        ),
        expect(false, &["XACK", other, "backend", "1-0"]),
        expect(false, &["XADD", &own, "*", "f", "v"]),
        expect(false, &["KEYS", "*"]),
        expect(false, &["FLUSHALL"]),
        expect(false, &["CONFIG", "GET", "maxmemory-policy"]),
        expect(false, &["DEBUG", "SLEEP", "0"]),
    ]
}

/// What the server's user must and must not be able to do.
pub fn server_expectations() -> Vec<Expectation> {
    let stream = "tenant:acme:mobile_sync:up:{acme:p0}:t1";
    vec![
        expect(true, &["XADD", stream, "*", "f", "v"]),
        expect(true, &["HMGET", "tenant:acme:mobile_sync:producer:x", "1"]),
        expect(true, &["EXISTS", "tenant:acme:auth_tokens:revoked:x"]),
        expect(true, &["INFO"]),
        expect(false, &["GET", "not-a-tenant-key"]),
        expect(false, &["KEYS", "*"]),
        expect(false, &["FLUSHALL"]),
        expect(false, &["FLUSHDB"]),
        expect(false, &["CONFIG", "GET", "maxmemory-policy"]),
        expect(false, &["DEBUG", "SLEEP", "0"]),
        expect(false, &["ACL", "LIST"]),
    ]
}

/// Checks `expectations` of `user` on every node with `ACL DRYRUN`; one line per failure.
pub async fn check(
    access: &RedisAccess,
    nodes: &[ConnectionInfo],
    user: &str,
    expectations: &[Expectation],
) -> Result<Vec<String>, StoreError> {
    let mut failures = Vec::new();
    for node in nodes {
        for e in expectations {
            let mut cmd = redis::cmd("ACL");
            cmd.arg("DRYRUN").arg(user).arg(&e.command);
            let answer: Result<String, StoreError> = query(access, node, &cmd).await;
            let allowed = match answer {
                Ok(text) => text == "OK",
                // "This user has no permissions to …" comes back as an error reply.
                Err(StoreError::Unavailable(text)) if text.contains("no permissions") => false,
                Err(StoreError::Unavailable(text)) if text.contains("User") => {
                    failures.push(format!("{}: no user {user}", node.addr()));
                    break;
                }
                Err(other) => return Err(other),
            };
            if allowed != e.allowed {
                failures.push(format!(
                    "{}: {user} {} {}",
                    node.addr(),
                    if e.allowed { "may not run" } else { "may run" },
                    e.command.join(" ")
                ));
            }
        }
    }
    Ok(failures)
}

/// `url` as connection settings (for tests and tools).
pub fn node(url: &str) -> Result<ConnectionInfo, StoreError> {
    url.into_connection_info()
        .map_err(|e| StoreError::Unavailable(format!("{}: {e}", access::redacted(url))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_carry_hashes_not_passwords() {
        let tenant = TenantId::new("acme").unwrap();
        let worker = worker_user(&tenant, "s3cret-worker");
        let line = worker.setuser_line();
        assert!(
            line.starts_with("ACL SETUSER tenant_acme_worker reset on #"),
            "{line}"
        );
        assert!(
            line.contains(" ~tenant:acme:* resetchannels -@all "),
            "{line}"
        );
        assert!(
            line.contains(" +xreadgroup ") && line.contains(" +xack "),
            "{line}"
        );
        assert!(!line.contains("s3cret"), "{line}");
        assert!(
            !line.contains("+keys") && !line.contains("+flushall"),
            "{line}"
        );
        let server = server_user("kryonix", "pw").setuser_line();
        assert!(server.contains(" ~tenant:* "), "{server}");
        assert!(
            !server.contains("+config") && !server.contains("+keys"),
            "{server}"
        );
        assert_eq!(
            password_rule("abc"),
            "#ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
