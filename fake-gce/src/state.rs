//! Everything the fake knows, behind one std mutex: instances, operations, request ids, the
//! knobs and the counters.
//!
//! A std `Mutex`, not a Tokio one, because nothing awaits while holding it: handlers lock,
//! decide, unlock, and the timers in `lifecycle` do the same after each sleep.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::errors::ApiError;
use crate::resources::{Instance, Operation};

/// The kinds of request `FakeGce::fail_next` can aim at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Insert,
    Get,
    List,
    Delete,
    /// `operations/{op}` and `operations/{op}/wait`.
    Operation,
    /// Whichever of the above comes first.
    Any,
}

/// What the fake has been asked to do, and what came of it.
///
/// Every request is counted when it arrives, including those answered with an injected fault
/// or refused by a knob (those are also in `rejected_by_knob`): a benchmark of a client wants
/// to know how many calls it made, not how many succeeded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub insert_calls: u64,
    /// Inserts that created an instance (retries answered from a request id are not).
    pub instances_created: u64,
    /// `instances_created` per zone.
    pub created_per_zone: BTreeMap<String, u64>,
    /// Inserts answered with the operation of an earlier insert with the same request id.
    pub duplicate_inserts_deduplicated: u64,
    pub delete_calls: u64,
    /// Deletes carrying the target instance's own metadata-server token.
    pub self_deletes: u64,
    pub get_calls: u64,
    pub list_calls: u64,
    /// Operation gets and waits.
    pub operation_calls: u64,
    /// Requests answered with an injected fault (`fail_next`), refused by `deny_inserts` or by
    /// a missing image.
    pub rejected_by_knob: u64,
    /// Inserts carried out whose answer was replaced by a 503 (`lose_next_insert_responses`).
    pub insert_responses_lost: u64,
    /// Insert operations that failed with ZONE_RESOURCE_POOL_EXHAUSTED.
    pub stockouts: u64,
    /// Insert operations that failed with QUOTA_EXCEEDED.
    pub quota_failures: u64,
    pub preemptions: u64,
    /// Requests to the metadata server.
    pub metadata_calls: u64,
}

/// The settings a test turns while the fake runs.
#[derive(Debug, Default)]
pub(crate) struct Knobs {
    pub stocked_out_zones: BTreeSet<String>,
    pub quota_exceeded_zones: BTreeSet<String>,
    pub deny_inserts: bool,
    pub missing_images: Vec<String>,
    pub op_delay: Duration,
    pub boot_delay: Duration,
    /// Injected faults, oldest first.
    pub faults: Vec<Fault>,
    pub insert_responses_to_lose: u32,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Fault {
    pub method: Method,
    pub remaining: u32,
    pub status: u16,
}

impl Knobs {
    /// Whether `image` (as the caller wrote it) is one of the missing ones: equal, or a path
    /// or URL ending in `/<missing>`.
    pub fn image_is_missing(&self, image: &str) -> bool {
        self.missing_images.iter().any(|missing| {
            image == missing
                || image
                    .strip_suffix(missing.as_str())
                    .is_some_and(|prefix| prefix.ends_with('/'))
        })
    }
}

/// The settings fixed at start.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub project: String,
    pub project_number: u64,
    pub agent_bin: Option<std::path::PathBuf>,
    pub agent_env: Vec<(String, String)>,
    pub max_page_size: u32,
    pub known_machine_types: BTreeSet<String>,
}

pub(crate) struct State {
    /// By (zone, name); a BTreeMap so lists come out in name order, as Compute Engine's do.
    pub instances: BTreeMap<(String, String), Instance>,
    /// By operation name (unique across zones).
    pub operations: HashMap<String, Operation>,
    /// (zone, requestId) → operation name. Compute Engine remembers request ids for a while;
    /// the fake never forgets.
    pub request_ids: HashMap<(String, String), String>,
    pub knobs: Knobs,
    pub counters: Counters,
    /// The last [`REQUEST_LOG_LIMIT`] requests as `METHOD /path?query`, oldest first.
    pub request_log: VecDeque<String>,
    next_id: u64,
}

/// Enough for any test's story, bounded for long benchmarks.
pub(crate) const REQUEST_LOG_LIMIT: usize = 10_000;

impl State {
    pub fn new(op_delay: Duration, boot_delay: Duration) -> Self {
        // Ids look like Compute Engine's (19 digits) and differ between fakes.
        let seed = uuid::Uuid::new_v4().as_u64_pair().0 % 1_000_000_000_000_000;
        State {
            instances: BTreeMap::new(),
            operations: HashMap::new(),
            request_ids: HashMap::new(),
            knobs: Knobs {
                op_delay,
                boot_delay,
                ..Knobs::default()
            },
            counters: Counters::default(),
            request_log: VecDeque::new(),
            next_id: 1_000_000_000_000_000_000 + seed,
        }
    }

    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn log_request(&mut self, line: String) {
        if self.request_log.len() == REQUEST_LOG_LIMIT {
            self.request_log.pop_front();
        }
        self.request_log.push_back(line);
    }

    /// Consumes one injected fault matching `method`, if any.
    pub fn take_fault(&mut self, method: Method) -> Result<(), ApiError> {
        let Some(index) = self
            .knobs
            .faults
            .iter()
            .position(|f| f.method == method || f.method == Method::Any)
        else {
            return Ok(());
        };
        let fault = &mut self.knobs.faults[index];
        let status = fault.status;
        fault.remaining = fault.remaining.saturating_sub(1);
        if fault.remaining == 0 {
            self.knobs.faults.remove(index);
        }
        self.counters.rejected_by_knob += 1;
        Err(ApiError::injected(status))
    }
}

/// What every handler and timer shares.
pub(crate) struct Shared {
    pub settings: Settings,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    state: Mutex<State>,
    /// Woken whenever an operation finishes, for `operations/{op}/wait`.
    pub op_changed: Notify,
    /// Timers, agent supervisors and the listener: what `shutdown` waits for.
    pub tracker: TaskTracker,
    pub cancel: CancellationToken,
}

impl Shared {
    pub fn new(settings: Settings, endpoint: String, state: State) -> Arc<Self> {
        Arc::new(Shared {
            settings,
            endpoint,
            state: Mutex::new(state),
            op_changed: Notify::new(),
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
        })
    }

    /// Locks the state. A panic while holding the lock leaves the data consistent enough for a
    /// test fake (every change is a few field writes), so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// 404 for a project the fake does not host, as Compute Engine answers.
    pub fn check_project(&self, project: &str) -> Result<(), ApiError> {
        if project == self.settings.project {
            Ok(())
        } else {
            Err(ApiError::not_found(&format!("projects/{project}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_consumed_in_order_and_any_matches_everything() {
        let mut state = State::new(Duration::ZERO, Duration::ZERO);
        state.knobs.faults.push(Fault {
            method: Method::Insert,
            remaining: 2,
            status: 503,
        });
        state.knobs.faults.push(Fault {
            method: Method::Any,
            remaining: 1,
            status: 429,
        });
        assert_eq!(
            state
                .take_fault(Method::Insert)
                .map_err(|e| e.status.as_u16()),
            Err(503)
        );
        assert_eq!(
            state.take_fault(Method::Get).map_err(|e| e.status.as_u16()),
            Err(429)
        );
        assert_eq!(state.take_fault(Method::Get), Ok(()));
        assert_eq!(
            state
                .take_fault(Method::Insert)
                .map_err(|e| e.status.as_u16()),
            Err(503)
        );
        assert_eq!(state.take_fault(Method::Insert), Ok(()));
        assert_eq!(state.counters.rejected_by_knob, 3);
    }

    #[test]
    fn missing_images_match_by_whole_path_segments() {
        let knobs = Knobs {
            missing_images: vec!["projects/p/global/images/agent-v2".into()],
            ..Knobs::default()
        };
        assert!(knobs.image_is_missing("projects/p/global/images/agent-v2"));
        assert!(knobs.image_is_missing(
            "https://www.googleapis.com/compute/v1/projects/p/global/images/agent-v2"
        ));
        assert!(!knobs.image_is_missing("projects/p/global/images/old-agent-v2"));
        assert!(!knobs.image_is_missing("projects/p/global/images/agent-v3"));
    }
}
