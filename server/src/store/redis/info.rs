//! Reading `INFO`: the facts about the sync Redis that start-up checks, `/readyz` and the
//! back-pressure memory reading need. `INFO` works where `CONFIG` is renamed or forbidden
//! (managed Redis).

use std::collections::HashMap;

use crate::store::SyncStoreFacts;

/// Parses `INFO` text into its `field:value` lines.
pub fn parse_info(info: &str) -> HashMap<String, String> {
    info.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.trim_end().split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Reads the facts start-up checks need from parsed `INFO`.
pub fn facts_from_info(info: &HashMap<String, String>) -> SyncStoreFacts {
    let number = |k: &str| info.get(k).and_then(|v| v.parse::<u64>().ok());
    let flag = |k: &str| info.get(k).map(|v| v == "1");
    SyncStoreFacts {
        kind: "redis",
        topology: None,
        address: None,
        cluster_state: None,
        nodes: Vec::new(),
        refusing_pushes: None,
        redis_version: info.get("redis_version").cloned(),
        maxmemory_policy: info.get("maxmemory_policy").cloned(),
        maxmemory: number("maxmemory"),
        used_memory: number("used_memory"),
        aof_enabled: flag("aof_enabled"),
        cluster_enabled: flag("cluster_enabled"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_parsing_reads_the_safety_facts() {
        let info = "# Server\r\nredis_version:7.0.15\r\n# Memory\r\nused_memory:1000\r\nmaxmemory:4000\r\nmaxmemory_policy:noeviction\r\n# Persistence\r\naof_enabled:1\r\n# Cluster\r\ncluster_enabled:0\r\n";
        let facts = facts_from_info(&parse_info(info));
        assert_eq!(facts.redis_version.as_deref(), Some("7.0.15"));
        assert_eq!(facts.maxmemory_policy.as_deref(), Some("noeviction"));
        assert_eq!(facts.used_memory, Some(1000));
        assert_eq!(facts.maxmemory, Some(4000));
        assert_eq!(facts.aof_enabled, Some(true));
        assert_eq!(facts.cluster_enabled, Some(false));
    }
}
