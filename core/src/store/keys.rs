//! The Redis key schema. Every key of a pool starts with the hash tag `{wp:POOL}`, so a whole
//! pool lives in one Redis Cluster slot and every script may touch all of them. Scripts get
//! every key they touch in KEYS, never by building names in Lua.
//!
//! | key                         | type   | holds |
//! |-----------------------------|--------|-------|
//! | `{wp:P}:vm:state`           | HASH   | vm_id → `provisioning`/`booting`/`ready`/`draining`/`dead` |
//! | `{wp:P}:vm:cap`             | HASH   | vm_id → capacity in games |
//! | `{wp:P}:vm:games`           | HASH   | vm_id → games leased to it |
//! | `{wp:P}:vm:running`         | HASH   | vm_id → executions running on it |
//! | `{wp:P}:vm:hb`              | ZSET   | vm_id → last heartbeat (ms, Redis clock) |
//! | `{wp:P}:vm:info`            | HASH   | vm_id → JSON `{created, ready, languages, agent, secret}` |
//! | `{wp:P}:vm:since`           | HASH   | vm_id → when it entered its state (ms) |
//! | `{wp:P}:vm:agent`           | HASH   | vm_id → JSON `{busy, spares}`: its agent's gauges, from its heartbeats |
//! | `{wp:P}:vm:seq`             | STRING | counter of VM ids (`POOL-N`) |
//! | `{wp:P}:boots`              | LIST   | recent boot times create → Ready (ms), newest first, ≤ 20 |
//! | `{wp:P}:leader`             | STRING | `replica_id|token`, expires after `WARMPOOL_LEADER_TTL_MS` |
//! | `{wp:P}:fence`              | STRING | fencing counter: the current leader's token |
//! | `{wp:P}:ctl`                | HASH   | the reconciler's state: desired, reason, inputs, clocks |
//! | `{wp:P}:reservations`       | HASH   | reservation_id → JSON reservation |
//! | `{wp:P}:settings`           | HASH   | the pool settings every process follows: `placement` |
//! | `{wp:P}:stats`              | HASH   | the pool's counters and histograms (`c|…`, `h|…`), read by /metrics |
//! | `{wp:P}:free`               | ZSET   | Ready VMs with a free slot → games leased (placement reads it) |
//! | `{wp:P}:games`              | HASH   | game_id → JSON `{vm, epoch, created, expires, ttl}` (`vm` empty: pending) |
//! | `{wp:P}:pending`            | ZSET   | pending game_id → arrival sequence (FIFO) |
//! | `{wp:P}:game:exp`           | ZSET   | game_id → lease expiry (ms) |
//! | `{wp:P}:seq`                | STRING | pool-wide sequence: game epochs and FIFO order |
//! | `{wp:P}:backlog`            | HASH   | pending game_id → JSON array of its queued execution ids |
//! | `{wp:P}:queued`             | ZSET   | queued execution_id → queue deadline (ms) |
//! | `{wp:P}:game:queued`        | ZSET   | `game_id:execution_id`, score 0 (a game's queue, by lex range) |
//! | `{wp:P}:exec:E`             | HASH   | execution record (game, epoch, state, vm, times, attempts, job, result, error, `retention`: its own `WARMPOOL_RESULT_TTL_S` in ms); expires that long after it ends |
//! | `{wp:P}:idem:G:K`           | STRING | idempotency key K of game G → execution_id |
//! | `{wp:P}:q:VM`               | STREAM | VM's work queue, consumer group `agents`, entries `e=execution_id` |
//! | `{wp:P}:events`             | PUBSUB | execution_id of every execution that reached a final state |

/// Consumer group every VM stream is read through.
pub const GROUP: &str = "agents";

/// Key names of one pool.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    pub vm_state: String,
    pub vm_cap: String,
    pub vm_games: String,
    pub vm_running: String,
    pub vm_hb: String,
    pub vm_info: String,
    pub vm_since: String,
    pub vm_agent: String,
    pub vm_seq: String,
    pub boots: String,
    pub leader: String,
    pub fence: String,
    pub ctl: String,
    pub reservations: String,
    pub settings: String,
    pub stats: String,
    pub free: String,
    pub games: String,
    pub pending: String,
    pub game_exp: String,
    pub seq: String,
    pub backlog: String,
    pub queued: String,
    pub game_queued: String,
    pub events: String,
}

impl Keys {
    pub fn new(pool: &str) -> Self {
        let prefix = format!("{{wp:{pool}}}");
        let k = |name: &str| format!("{prefix}:{name}");
        Keys {
            vm_state: k("vm:state"),
            vm_cap: k("vm:cap"),
            vm_games: k("vm:games"),
            vm_running: k("vm:running"),
            vm_hb: k("vm:hb"),
            vm_info: k("vm:info"),
            vm_since: k("vm:since"),
            vm_agent: k("vm:agent"),
            vm_seq: k("vm:seq"),
            boots: k("boots"),
            leader: k("leader"),
            fence: k("fence"),
            ctl: k("ctl"),
            reservations: k("reservations"),
            settings: k("settings"),
            stats: k("stats"),
            free: k("free"),
            games: k("games"),
            pending: k("pending"),
            game_exp: k("game:exp"),
            seq: k("seq"),
            backlog: k("backlog"),
            queued: k("queued"),
            game_queued: k("game:queued"),
            events: k("events"),
            prefix,
        }
    }

    pub fn exec(&self, execution_id: &str) -> String {
        format!("{}:exec:{execution_id}", self.prefix)
    }

    /// Idempotency key of a game. Game ids cannot contain ':', so `G:K` is unambiguous.
    pub fn idem(&self, game_id: &str, key: &str) -> String {
        format!("{}:idem:{game_id}:{key}", self.prefix)
    }

    /// The work stream of a VM; `queue("")` is a placeholder in the pool's slot for scripts
    /// called when the game has no VM.
    pub fn queue(&self, vm_id: &str) -> String {
        format!("{}:q:{vm_id}", self.prefix)
    }

    /// Every key of this pool starts with this (for tests and clean-up).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Redis Cluster hashes only the part between the first `{` and the next `}`.
    fn hash_tag(key: &str) -> &str {
        let open = key.find('{').expect("has a tag");
        let close = key[open..].find('}').expect("closed") + open;
        &key[open + 1..close]
    }

    #[test]
    fn every_key_of_a_pool_shares_one_hash_tag() {
        let keys = Keys::new("games-eu");
        let all = [
            &keys.vm_state,
            &keys.vm_cap,
            &keys.vm_games,
            &keys.vm_running,
            &keys.vm_hb,
            &keys.vm_info,
            &keys.vm_since,
            &keys.vm_agent,
            &keys.vm_seq,
            &keys.boots,
            &keys.leader,
            &keys.fence,
            &keys.ctl,
            &keys.reservations,
            &keys.settings,
            &keys.stats,
            &keys.free,
            &keys.games,
            &keys.pending,
            &keys.game_exp,
            &keys.seq,
            &keys.backlog,
            &keys.queued,
            &keys.game_queued,
            &keys.events,
        ];
        for key in all {
            assert_eq!(hash_tag(key), "wp:games-eu", "{key}");
        }
        assert_eq!(hash_tag(&keys.exec("e1")), "wp:games-eu");
        assert_eq!(hash_tag(&keys.idem("g1", "{other}")), "wp:games-eu");
        assert_eq!(hash_tag(&keys.queue("vm-1")), "wp:games-eu");
    }
}
