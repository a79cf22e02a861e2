//! The `kryonix-server` binary: parse the command line, set up logging, run the subcommand.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kryonix_protocol::TenantId;
use kryonix_server::cli::{
    AclAction, AclArgs, AclTarget, Cli, Command, RevokeArgs, ServeArgs, TokenAction, TokenArgs,
};
use kryonix_server::startup::{self, Finding};
use kryonix_server::store::redis::RedisOptions;
use kryonix_server::store::redis::acl;
use kryonix_server::store::{RedisStore, Store};
use kryonix_server::{AppState, run, shutdown_signal};
use tracing_subscriber::EnvFilter;

// glibc's allocator spent ~40 % of the server's CPU under push load (perf: _int_malloc,
// unlink_chunk, malloc_consolidate) on the many short-lived buffers of large JSON batches.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only where a person reads them: a file or journald gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(args)) => serve(args).await,
        Some(Command::Token(args)) => token(args).await,
        Some(Command::Check(args)) => check(args).await,
        Some(Command::Acl(args)) => acl(*args).await,
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    let config = match args.settle().and_then(|c| c.validate().map(|()| c)) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("kryonix-server: {err}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_json);
    let (store, warnings) = match startup::open_store(&config).await {
        Ok(opened) => opened,
        Err(err) => {
            tracing::error!("refusing to start: {err}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(listen = %config.listen, %err, "cannot bind");
            return ExitCode::FAILURE;
        }
    };
    let state = AppState::new(config, store, warnings);
    match run(listener, state, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(%err, "server failed");
            ExitCode::FAILURE
        }
    }
}

async fn token(args: TokenArgs) -> ExitCode {
    if let Some(TokenAction::Revoke(revoke)) = args.action {
        return revoke_token(*revoke).await;
    }
    let config = match args.serve.settle().and_then(|c| c.validate().map(|()| c)) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("kryonix-server: {err}");
            return ExitCode::from(2);
        }
    };
    let (Some(tenant), Some(subject)) = (args.tenant, args.subject) else {
        eprintln!("kryonix-server: token needs --tenant and --subject");
        return ExitCode::from(2);
    };
    let tenant = match TenantId::new(tenant) {
        Ok(t) => t,
        Err(err) => {
            eprintln!("kryonix-server: invalid tenant: {err}");
            return ExitCode::from(2);
        }
    };
    let keys = config.token_keys();
    match keys.mint(
        &tenant,
        &subject,
        args.scope.into(),
        Duration::from_secs(args.ttl_secs),
    ) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("kryonix-server: {err}");
            ExitCode::from(2)
        }
    }
}

async fn check(args: ServeArgs) -> ExitCode {
    let config = match args.settle() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("kryonix-server: {err}");
            return ExitCode::from(2);
        }
    };
    if let Err(err) = config.validate_topology() {
        eprintln!("kryonix-server: {err}");
        return ExitCode::from(2);
    }
    let Some(topology) = config.topology() else {
        println!("no Redis configured: `serve` would run on the embedded development store");
        return ExitCode::SUCCESS;
    };
    let options = RedisOptions {
        partitions: config.partitions(),
        allow_evicting: config.allow_evicting_sync_store,
        access: config.redis_access.clone(),
    };
    let partitions = options.partitions;
    let connections = startup::connection_findings(&topology, &config.redis_access);
    let store = match RedisStore::open(&topology, options).await {
        Ok(store) => Store::Redis(store),
        Err(err) => {
            println!("FAIL  cannot connect: {err}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "ok    {} Redis, {} up-stream partition(s) per tenant",
        topology.kind(),
        partitions
    );
    let facts = match store.sync_facts().await {
        Ok(facts) => facts,
        Err(err) => {
            println!("FAIL  cannot read INFO: {err}");
            return ExitCode::FAILURE;
        }
    };
    match (&facts.address, facts.nodes.len()) {
        (_, n) if n > 0 => println!("ok    sync store on {n} primaries (each checked below)"),
        (Some(address), _) => println!("ok    sync store at {address}"),
        _ => {}
    }
    let cache = match &store {
        Store::Redis(redis) => startup::assess_cache(&redis.instance_policies().await),
        Store::Embedded(_) => Vec::new(),
    };
    let mut refused = false;
    for finding in connections
        .into_iter()
        .chain(startup::assess_all(&facts))
        .chain(cache)
    {
        match finding {
            Finding::Ok(text) => println!("ok    {text}"),
            Finding::Warning(text) => println!("WARN  {text}"),
            Finding::Refusal(text) => {
                refused = true;
                println!("FAIL  {text}");
            }
        }
    }
    if refused && !config.allow_evicting_sync_store {
        println!("serve would refuse to start (see the FAIL lines)");
        ExitCode::FAILURE
    } else {
        println!("serve would start");
        ExitCode::SUCCESS
    }
}

/// `token revoke`: records the revocation in the store `serve` would use.
async fn revoke_token(args: RevokeArgs) -> ExitCode {
    let config = match args.serve.settle().and_then(|c| c.validate().map(|()| c)) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("kryonix-server: {err}");
            return ExitCode::from(2);
        }
    };
    let keys = config.token_keys();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (tenant, jti, until) = match (args.token, args.jti, args.tenant) {
        (Some(token), _, _) => match keys.inspect(&token) {
            Ok(p) => match p.jti {
                Some(jti) => (p.tenant, jti, p.expires_at),
                None => {
                    eprintln!(
                        "kryonix-server: the token has no id (jti); rotate the secret to end it"
                    );
                    return ExitCode::from(2);
                }
            },
            Err(err) => {
                eprintln!("kryonix-server: cannot revoke that token: {err}");
                return ExitCode::from(2);
            }
        },
        (None, Some(jti), Some(tenant)) => match TenantId::new(tenant) {
            Ok(tenant) if kryonix_server::auth::valid_token_id(&jti) => (
                tenant,
                jti,
                args.expires_at.unwrap_or(
                    now.saturating_add(kryonix_server::api::tokens::DEFAULT_REVOCATION_SECS),
                ),
            ),
            Ok(_) => {
                eprintln!("kryonix-server: invalid jti");
                return ExitCode::from(2);
            }
            Err(err) => {
                eprintln!("kryonix-server: invalid tenant: {err}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("kryonix-server: give --token, or --jti with --tenant");
            return ExitCode::from(2);
        }
    };
    let until = kryonix_server::api::tokens::bounded(until, now);
    if until <= now {
        println!("the token expired already; nothing to record");
        return ExitCode::SUCCESS;
    }
    let store = match startup::open_store(&config).await {
        Ok((store, _)) => store,
        Err(err) => {
            eprintln!("kryonix-server: {err}");
            return ExitCode::FAILURE;
        }
    };
    match store.revoke(&tenant, &jti, until).await {
        Ok(()) => {
            println!("revoked {jti} of tenant {tenant} until {until}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("kryonix-server: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `acl plan|apply|check`.
async fn acl(args: AclArgs) -> ExitCode {
    let (action, target): (&str, AclTarget) = match args.action {
        AclAction::Plan(t) => ("plan", t),
        AclAction::Apply(t) => ("apply", t),
        AclAction::Check(t) => ("check", t),
    };
    let fail = |message: String| {
        eprintln!("kryonix-server: {message}");
        ExitCode::from(2)
    };
    let tenant = match target.tenant.as_deref().map(TenantId::new).transpose() {
        Ok(tenant) => tenant,
        Err(err) => return fail(format!("invalid tenant: {err}")),
    };
    let name = match (&tenant, &target.server_user) {
        (Some(t), _) => format!("tenant_{}_worker", t.as_str()),
        (None, Some(user)) => user.clone(),
        (None, None) => return fail("give --tenant or --server-user".into()),
    };
    let user = |password: &str| match &tenant {
        Some(t) => acl::worker_user(t, password),
        None => acl::server_user(&name, password),
    };
    let password = match (action, &target.password_file) {
        ("check", _) => None,
        (_, Some(path)) => match std::fs::read_to_string(path) {
            Ok(text) if !text.lines().next().unwrap_or_default().is_empty() => {
                Some(text.lines().next().unwrap_or_default().to_owned())
            }
            Ok(_) => return fail(format!("the password file {} is empty", path.display())),
            Err(err) => return fail(format!("cannot read {}: {err}", path.display())),
        },
        (_, None) => return fail(format!("acl {action} needs --password-file")),
    };
    if action == "plan" {
        println!(
            "{}",
            user(password.as_deref().unwrap_or_default()).setuser_line()
        );
        return ExitCode::SUCCESS;
    }
    let config = match target.serve.settle() {
        Ok(config) => config,
        Err(err) => return fail(err.to_string()),
    };
    let Some(topology) = config.topology() else {
        return fail(
            "acl needs a Redis deployment (--redis-url, --redis-cluster or --sentinel)".into(),
        );
    };
    let nodes = match acl::nodes(&topology, &config.redis_access).await {
        Ok(nodes) => nodes,
        Err(err) => {
            println!("FAIL  cannot list the nodes: {err}");
            return ExitCode::FAILURE;
        }
    };
    if action == "apply" {
        let users = [user(password.as_deref().unwrap_or_default())];
        return match acl::apply(&config.redis_access, &nodes, &users).await {
            Ok(done) => {
                println!(
                    "applied {name} on {} node(s): {}",
                    done.len(),
                    done.join(", ")
                );
                ExitCode::SUCCESS
            }
            Err(err) => {
                println!("FAIL  {err}");
                ExitCode::FAILURE
            }
        };
    }
    let expectations = match &tenant {
        Some(t) => acl::worker_expectations(t),
        None => acl::server_expectations(),
    };
    match acl::check(&config.redis_access, &nodes, &name, &expectations).await {
        Ok(failures) if failures.is_empty() => {
            println!(
                "ok    {name} on {} node(s): {} checks each",
                nodes.len(),
                expectations.len()
            );
            ExitCode::SUCCESS
        }
        Ok(failures) => {
            for failure in failures {
                println!("FAIL  {failure}");
            }
            ExitCode::FAILURE
        }
        Err(err) => {
            println!("FAIL  {err}");
            ExitCode::FAILURE
        }
    }
}
