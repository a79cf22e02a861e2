//! Prometheus metrics served at `/metrics`.
//!
//! Label values come from small closed sets (route templates, status codes, tiers, outcomes,
//! scopes, error kinds) so the number of series stays bounded. Per-tenant series exist only for
//! tenants named in the configuration; every other tenant is counted under `_other`, so a flood
//! of new tenants cannot blow up the series count.

use std::collections::BTreeSet;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ItemLabels {
    tier: u8,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabel {
    scope: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabel {
    tier: u8,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProducerLabel {
    producer: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabel {
    tenant: String,
}

/// Label used for tenants not named in the configuration.
pub const OTHER_TENANT: &str = "_other";

/// All metrics of one server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    in_flight: Gauge,
    items: Family<ItemLabels, Counter>,
    tenant_items: Family<TenantLabel, Counter>,
    push_seconds: Histogram,
    store_errors: Family<KindLabel, Counter>,
    rate_limited: Family<ScopeLabel, Counter>,
    backpressured: Family<TierLabel, Counter>,
    push_conflicts: Counter,
    hellos: Family<ProducerLabel, Counter>,
    tls_reloads: Family<OutcomeLabel, Counter>,
    known_tenants: BTreeSet<String>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

impl Metrics {
    /// `known_tenants`: the tenants that get their own label value.
    pub fn new(known_tenants: impl IntoIterator<Item = String>) -> Self {
        let mut registry = Registry::with_prefix("kryonix");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route template, method and status",
            requests.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "http_requests_in_flight",
            "Requests being handled right now (graceful shutdown waits for them)",
            in_flight.clone(),
        );
        let items = Family::<ItemLabels, Counter>::default();
        registry.register(
            "push_items",
            "Pushed items by tier and outcome (accepted, duplicate, rejected)",
            items.clone(),
        );
        let tenant_items = Family::<TenantLabel, Counter>::default();
        registry.register(
            "tenant_push_items",
            "Pushed items stored, by configured tenant (others under _other)",
            tenant_items.clone(),
        );
        // 0.5 ms to ~8 s.
        let push_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 15));
        registry.register(
            "push_duration_seconds",
            "Time to answer a push, store round trips included",
            push_seconds.clone(),
        );
        let tls_reloads = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "tls_reloads",
            "Reloads of the HTTPS certificate, by outcome (ok, failed: the previous one stays)",
            tls_reloads.clone(),
        );
        let store_errors = Family::<KindLabel, Counter>::default();
        registry.register(
            "store_errors",
            "Store (Redis or embedded) errors by kind",
            store_errors.clone(),
        );
        let rate_limited = Family::<ScopeLabel, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests answered 429, by the scope that was over its rate",
            rate_limited.clone(),
        );
        let backpressured = Family::<TierLabel, Counter>::default();
        registry.register(
            "backpressured",
            "Push requests answered 503 for memory pressure, by highest tier number in the batch",
            backpressured.clone(),
        );
        let push_conflicts = Counter::default();
        registry.register(
            "push_conflicts",
            "Push transactions started over because a concurrent push of the same producer changed its record",
            push_conflicts.clone(),
        );
        let hellos = Family::<ProducerLabel, Counter>::default();
        registry.register(
            "hellos",
            "Hellos by whether the server knew the producer (known) or had nothing for it (unknown: new, or forgotten after its idle time)",
            hellos.clone(),
        );
        Self {
            registry,
            requests,
            in_flight,
            items,
            tenant_items,
            push_seconds,
            store_errors,
            tls_reloads,
            rate_limited,
            backpressured,
            push_conflicts,
            hellos,
            known_tenants: known_tenants.into_iter().collect(),
        }
    }

    pub fn request(&self, route: &str, method: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status,
            })
            .inc();
    }

    /// Counts a request as in flight until the guard drops (also when the request is cancelled).
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// Requests being handled now.
    pub fn in_flight_now(&self) -> i64 {
        self.in_flight.get()
    }

    pub fn item(&self, tier: u8, outcome: &'static str) {
        self.items(tier, outcome, 1);
    }

    pub fn items(&self, tier: u8, outcome: &'static str, n: u64) {
        self.items
            .get_or_create(&ItemLabels { tier, outcome })
            .inc_by(n);
    }

    pub fn tenant_items(&self, tenant: &str, stored: u64) {
        let tenant = if self.known_tenants.contains(tenant) {
            tenant
        } else {
            OTHER_TENANT
        };
        self.tenant_items
            .get_or_create(&TenantLabel {
                tenant: tenant.to_owned(),
            })
            .inc_by(stored);
    }

    pub fn push_seconds(&self, seconds: f64) {
        self.push_seconds.observe(seconds);
    }

    pub fn store_error(&self, kind: &'static str) {
        self.store_errors.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn tls_reloaded(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.tls_reloads
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    pub fn rate_limited(&self, scope: &'static str) {
        self.rate_limited.get_or_create(&ScopeLabel { scope }).inc();
    }

    pub fn backpressured(&self, tier: u8) {
        self.backpressured.get_or_create(&TierLabel { tier }).inc();
    }

    pub fn push_conflicts(&self, n: u64) {
        self.push_conflicts.inc_by(n);
    }

    /// Counts a hello; `known`: the server had stored something for the producer.
    pub fn hello(&self, known: bool) {
        let producer = if known { "known" } else { "unknown" };
        self.hellos.get_or_create(&ProducerLabel { producer }).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Guard of one in-flight request.
#[derive(Debug)]
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_tenants_share_one_series() {
        let m = Metrics::new(["acme".to_owned()]);
        m.tenant_items("acme", 2);
        m.tenant_items("t1", 1);
        m.tenant_items("t2", 1);
        m.item(1, "accepted");
        m.request("/v1/sync/push", "POST", 200);
        let text = m.render().unwrap();
        assert!(
            text.contains(r#"kryonix_tenant_push_items_total{tenant="acme"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kryonix_tenant_push_items_total{tenant="_other"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kryonix_push_items_total{tier="1",outcome="accepted"} 1"#),
            "{text}"
        );
        assert!(!text.contains("t1"));
    }
}
