//! The Lua scripts of `redis/`, embedded at build time. Each file is named
//! `<verb>_<noun>-<numkeys>.lua`; `redis/common.lua` is prepended to every one. They are
//! called by SHA and reloaded on `NOSCRIPT` (a Redis restart or `SCRIPT FLUSH`).

use fred::types::scripts::Script;
use std::sync::LazyLock;

/// One embedded script: its name, its declared key count, and the code Redis runs.
pub struct LuaScript {
    pub name: &'static str,
    pub num_keys: usize,
    /// The file as written (header and body), without the common prelude.
    pub file: &'static str,
    pub script: Script,
}

macro_rules! lua {
    ($name:literal, $keys:literal) => {{
        let file = include_str!(concat!("../../redis/", $name, "-", $keys, ".lua"));
        LuaScript {
            name: $name,
            num_keys: $keys,
            file,
            script: Script::from_lua(concat!(
                include_str!("../../redis/common.lua"),
                include_str!(concat!("../../redis/", $name, "-", $keys, ".lua"))
            )),
        }
    }};
}

/// Every script, by name.
pub struct Scripts {
    pub acquire_leader: LuaScript,
    pub release_leader: LuaScript,
    pub vm_transition: LuaScript,
    pub requeue_execution: LuaScript,
    pub snapshot_pool: LuaScript,
    pub register_vm: LuaScript,
    pub heartbeat: LuaScript,
    pub put_game: LuaScript,
    pub delete_game: LuaScript,
    pub place_pending: LuaScript,
    pub submit_execution: LuaScript,
    pub start_execution: LuaScript,
    pub finish_execution: LuaScript,
    pub end_execution: LuaScript,
}

impl Scripts {
    pub fn all(&self) -> [&LuaScript; 14] {
        [
            &self.snapshot_pool,
            &self.acquire_leader,
            &self.release_leader,
            &self.vm_transition,
            &self.requeue_execution,
            &self.register_vm,
            &self.heartbeat,
            &self.put_game,
            &self.delete_game,
            &self.place_pending,
            &self.submit_execution,
            &self.start_execution,
            &self.finish_execution,
            &self.end_execution,
        ]
    }
}

pub static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    acquire_leader: lua!("acquire_leader", 2),
    release_leader: lua!("release_leader", 1),
    vm_transition: lua!("vm_transition", 12),
    requeue_execution: lua!("requeue_execution", 7),
    snapshot_pool: lua!("snapshot_pool", 7),
    register_vm: lua!("register_vm", 10),
    heartbeat: lua!("heartbeat", 4),
    put_game: lua!("put_game", 7),
    delete_game: lua!("delete_game", 10),
    place_pending: lua!("place_pending", 7),
    submit_execution: lua!("submit_execution", 13),
    start_execution: lua!("start_execution", 6),
    finish_execution: lua!("finish_execution", 3),
    end_execution: lua!("end_execution", 3),
});

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Indexes n of every `KEYS[n]` in `text`.
    fn key_indexes(text: &str) -> BTreeSet<usize> {
        text.match_indices("KEYS[")
            .filter_map(|(at, _)| {
                let rest = &text[at + 5..];
                rest[..rest.find(']')?].parse().ok()
            })
            .collect()
    }

    #[test]
    fn every_script_declares_and_uses_exactly_its_key_count() {
        for s in SCRIPTS.all() {
            let (header, body) = s.file.split_once("]]").expect("a header comment");
            let expected: BTreeSet<usize> = (1..=s.num_keys).collect();
            assert_eq!(key_indexes(header), expected, "{}: header", s.name);
            assert_eq!(key_indexes(body), expected, "{}: body", s.name);
            assert!(
                header.contains(&format!("{}:", s.name)),
                "{}: the header names the script",
                s.name
            );
        }
    }

    #[test]
    fn every_file_in_redis_dir_is_registered() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/redis");
        let registered: BTreeSet<String> = SCRIPTS
            .all()
            .iter()
            .map(|s| format!("{}-{}.lua", s.name, s.num_keys))
            .collect();
        let on_disk: BTreeSet<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name != "common.lua")
            .collect();
        assert_eq!(registered, on_disk);
    }

    #[test]
    fn common_prelude_declares_no_keys() {
        assert!(key_indexes(include_str!("../../redis/common.lua")).is_empty());
    }
}
