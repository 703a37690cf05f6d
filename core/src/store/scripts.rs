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

impl LuaScript {
    /// How many ARGV the header declares (the highest `ARGV[n]` it names): every call passes
    /// exactly as many (checked in debug builds, as the key count is).
    pub fn num_args(&self) -> usize {
        let header = self.file.split_once("]]").map_or(self.file, |(h, _)| h);
        header
            .match_indices("ARGV[")
            .filter_map(|(at, _)| {
                let rest = &header[at + 5..];
                rest[..rest.find(']')?].parse::<usize>().ok()
            })
            .max()
            .unwrap_or(0)
    }
}

macro_rules! lua {
    ($name:literal, $keys:literal) => {{
        let file = include_str!(concat!("../../../redis/", $name, "-", $keys, ".lua"));
        LuaScript {
            name: $name,
            num_keys: $keys,
            file,
            script: Script::from_lua(concat!(
                include_str!("../../../redis/common.lua"),
                include_str!(concat!("../../../redis/", $name, "-", $keys, ".lua"))
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
    pub drop_entry: LuaScript,
    pub add_reservation: LuaScript,
    pub save_reservation: LuaScript,
}

impl Scripts {
    pub fn all(&self) -> [&LuaScript; 17] {
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
            &self.drop_entry,
            &self.add_reservation,
            &self.save_reservation,
        ]
    }
}

pub static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    acquire_leader: lua!("acquire_leader", 2),
    release_leader: lua!("release_leader", 1),
    vm_transition: lua!("vm_transition", 13),
    requeue_execution: lua!("requeue_execution", 8),
    snapshot_pool: lua!("snapshot_pool", 7),
    register_vm: lua!("register_vm", 12),
    heartbeat: lua!("heartbeat", 7),
    put_game: lua!("put_game", 7),
    delete_game: lua!("delete_game", 10),
    place_pending: lua!("place_pending", 7),
    submit_execution: lua!("submit_execution", 13),
    start_execution: lua!("start_execution", 8),
    finish_execution: lua!("finish_execution", 5),
    end_execution: lua!("end_execution", 4),
    drop_entry: lua!("drop_entry", 2),
    add_reservation: lua!("add_reservation", 1),
    save_reservation: lua!("save_reservation", 1),
});

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Indexes n of every `NAME[n]` in `text` (`KEYS`, `ARGV`).
    fn indexes(text: &str, name: &str) -> BTreeSet<usize> {
        let open = format!("{name}[");
        text.match_indices(&open)
            .filter_map(|(at, _)| {
                let rest = &text[at + open.len()..];
                rest[..rest.find(']')?].parse().ok()
            })
            .collect()
    }

    /// The status words of `text`: each table that opens with a quoted word (`{'ok', vm}`). In
    /// a body that is what it returns (`return { 'gone' }`, or a table built to be returned,
    /// `local out = { 'deleted', vm }`); in a header, what its Returns section lists.
    fn status_words(text: &str) -> BTreeSet<String> {
        text.match_indices('{')
            .filter_map(|(at, _)| {
                let rest = text[at + 1..].trim_start();
                let word = rest.strip_prefix('\'')?;
                Some(word[..word.find('\'')?].to_string())
            })
            .collect()
    }

    /// The header's `Returns` section (up to `Errors:`).
    fn returns_section(header: &str) -> &str {
        let from = header.find("Returns").expect("a Returns section");
        let to = header[from..]
            .find("Errors:")
            .map_or(header.len(), |i| from + i);
        &header[from..to]
    }

    #[test]
    fn every_header_declares_exactly_the_keys_and_args_its_body_uses() {
        for s in SCRIPTS.all() {
            let (header, body) = s.file.split_once("]]").expect("a header comment");
            let expected: BTreeSet<usize> = (1..=s.num_keys).collect();
            assert_eq!(indexes(header, "KEYS"), expected, "{}: header", s.name);
            assert_eq!(indexes(body, "KEYS"), expected, "{}: body", s.name);
            let args = indexes(header, "ARGV");
            assert_eq!(
                indexes(body, "ARGV"),
                args,
                "{}: ARGV, header and body",
                s.name
            );
            let contiguous: BTreeSet<usize> = (1..=args.len()).collect();
            assert_eq!(args, contiguous, "{}: ARGV indexes have gaps", s.name);
            assert!(
                header.contains(&format!("{}:", s.name)),
                "{}: the header names the script",
                s.name
            );
            assert!(header.contains("Errors:"), "{}: an Errors section", s.name);
        }
    }

    #[test]
    fn every_header_lists_exactly_the_status_words_its_body_returns() {
        for s in SCRIPTS.all() {
            let (header, body) = s.file.split_once("]]").expect("a header comment");
            assert_eq!(
                status_words(returns_section(header)),
                status_words(body),
                "{}: the words under Returns and those the body returns",
                s.name
            );
        }
    }

    #[test]
    fn the_word_checks_see_what_they_are_meant_to() {
        assert_eq!(
            status_words(
                "if x then return { 'gone' } end\nlocal out = {'ok', 1}\nreturn out\nreturn 0"
            ),
            ["gone", "ok"].map(String::from).into()
        );
        assert_eq!(
            status_words("Returns {'ok', vm} | {'skip', state or 'gone'} (an 'aside')"),
            ["ok", "skip"].map(String::from).into()
        );
        assert_eq!(indexes("ARGV[1] ARGV[3] KEYS[2]", "ARGV"), [1, 3].into());
    }

    #[test]
    fn every_file_in_redis_dir_is_registered() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../redis");
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
        let common = include_str!("../../../redis/common.lua");
        assert!(indexes(common, "KEYS").is_empty());
        assert!(indexes(common, "ARGV").is_empty());
    }
}
