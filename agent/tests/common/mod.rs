//! Jobs the sandbox test suites share.
#![allow(dead_code)]

use warmpool::model::{FileSpec, Job, Limits};

pub fn limits() -> Limits {
    Limits {
        wall_time_ms: 5_000,
        cpu_time_ms: 5_000,
        memory_mb: 512,
        max_output_bytes: 64 * 1024,
    }
}

pub fn job(language: &str, files: &[(&str, &str)]) -> Job {
    Job {
        execution_id: "test-execution".into(),
        game_id: "test-game".into(),
        language: language.into(),
        files: files
            .iter()
            .map(|(name, content)| FileSpec {
                name: name.to_string(),
                content: content.to_string(),
            })
            .collect(),
        stdin: String::new(),
        args: Vec::new(),
        limits: limits(),
    }
}

pub fn bash(script: &str) -> Job {
    job("bash", &[("main.sh", script)])
}

pub fn python(source: &str) -> Job {
    job("python", &[("main.py", source)])
}
