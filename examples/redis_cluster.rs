//! Two app servers sharing one Redis Cluster: two instances of one
//! application in this process, on two ports, each with its own cluster
//! connection. Sign in on one, and the other knows you.
//!
//! ```text
//! SESSION_REDIS_URL=redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003 \
//!   cargo run --example redis_cluster
//! ```
//!
//! The store is configured as `keepsake::from_env` configures
//! `SESSION_DRIVER=redis-cluster`: the nodes from `SESSION_REDIS_URL` (a
//! comma-separated list of `redis://` URLs; any reachable node finds the
//! others), the key prefix from `SESSION_PREFIX` (default `keepsake:`),
//! `SESSION_LIFETIME` and the other `SESSION_*` variables, from the
//! environment or a `.env` file. Each session is one key, so nothing crosses
//! a slot. `PORT` chooses the first port (default 3001; the second instance
//! takes the next one). The example prints the curl lines to try:
//!
//! ```text
//! $ curl -s -b jar.txt -c jar.txt -d user=alice http://127.0.0.1:3001/login
//! instance a: signed in as alice
//! $ curl -s -b jar.txt -c jar.txt -X POST http://127.0.0.1:3002/count
//! instance b: count 1
//! $ curl -s -b jar.txt -c jar.txt http://127.0.0.1:3001/me
//! instance a: signed in as alice (count 1)
//! ```

#[path = "shared/two_instances.rs"]
mod two_instances;

use std::process::ExitCode;

use keepsake::config::Driver;

#[tokio::main]
async fn main() -> ExitCode {
    two_instances::init_tracing();
    let mut config = match two_instances::config_from_env() {
        Ok(config) => config,
        Err(code) => return code,
    };
    config.driver = Driver::RedisCluster;
    // The configuration falls back to a single local node, which is not a
    // cluster: the example wants the list spelled out.
    let set = std::env::var("SESSION_REDIS_URL").is_ok_and(|urls| !urls.trim().is_empty());
    if !set {
        return two_instances::missing(
            "SESSION_REDIS_URL",
            "it lists the Redis Cluster nodes, comma-separated",
            "redis_cluster",
            "redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003",
        );
    }
    two_instances::run(config, "Redis Cluster").await
}
