//! Compute Engine settings (env), validated once at start, and the instance body they produce.
//!
//! Every VM of a pool is built from the same settings: the instance name, labels and metadata
//! are the only per-VM parts (see [`GceSettings::instance`]).

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;
use google_cloud_compute_v1::model::{
    scheduling, AccessConfig, AttachedDisk, AttachedDiskInitializeParams, Instance, Metadata,
    NetworkInterface, Scheduling, ServiceAccount, Tags,
};

use crate::config::ConfigError;

/// The label every instance of a pool carries: `warmpool-pool=POOL`.
pub const POOL_LABEL: &str = "warmpool-pool";
/// The label naming the VM record an instance plays: `warmpool-vm=VM_ID`.
pub const VM_LABEL: &str = "warmpool-vm";

/// The startup script a stock Container-Optimized OS image runs (`startup-script` metadata):
/// it starts the agent container (see `agent/deploy/`).
pub const STARTUP_SCRIPT: &str = include_str!("../../agent/deploy/startup.sh");

/// `WARMPOOL_GCE_*`: how the `gce` provider builds and finds VMs.
#[derive(Debug, Clone, Args)]
pub struct GceConfig {
    /// Project the VMs live in (required with WARMPOOL_PROVIDER=gce).
    #[arg(long = "gce-project", env = "WARMPOOL_GCE_PROJECT")]
    pub project: Option<String>,
    /// Zones in order of preference, comma-separated; a stockout or a zone quota error moves
    /// a create to the next one (required with WARMPOOL_PROVIDER=gce).
    #[arg(long = "gce-zones", env = "WARMPOOL_GCE_ZONES")]
    pub zones: Option<String>,
    #[arg(
        long = "gce-machine-type",
        env = "WARMPOOL_GCE_MACHINE_TYPE",
        default_value = "e2-standard-2"
    )]
    pub machine_type: String,
    /// Boot disk image (ignored with an instance template).
    #[arg(
        long = "gce-image",
        env = "WARMPOOL_GCE_IMAGE",
        default_value = "projects/cos-cloud/global/images/family/cos-stable"
    )]
    pub image: String,
    /// An instance template (`projects/P/global/instanceTemplates/T`): when set, instances come
    /// from it and warmpool sets only name, labels and metadata.
    #[arg(long = "gce-instance-template", env = "WARMPOOL_GCE_INSTANCE_TEMPLATE")]
    pub instance_template: Option<String>,
    #[arg(
        long = "gce-network",
        env = "WARMPOOL_GCE_NETWORK",
        default_value = "global/networks/default"
    )]
    pub network: String,
    /// Subnetwork (`regions/R/subnetworks/S`); default: the network's auto subnet.
    #[arg(long = "gce-subnetwork", env = "WARMPOOL_GCE_SUBNETWORK")]
    pub subnetwork: Option<String>,
    /// Give VMs an external IP (they need one without Cloud NAT to reach a public registry).
    #[arg(
        long = "gce-external-ip",
        env = "WARMPOOL_GCE_EXTERNAL_IP",
        default_value_t = false
    )]
    pub external_ip: bool,
    /// Service account email of the VMs, or `none`. The agent's self-delete needs one with the
    /// compute scope; without it the agent powers its VM off instead.
    #[arg(
        long = "gce-service-account",
        env = "WARMPOOL_GCE_SERVICE_ACCOUNT",
        default_value = "none"
    )]
    pub service_account: String,
    /// Network tags, comma-separated (firewall rules select VMs by them).
    #[arg(long = "gce-tags", env = "WARMPOOL_GCE_TAGS", default_value = "")]
    pub tags: String,
    /// Extra labels, `key=value` comma-separated (the pool and VM labels are always set).
    #[arg(long = "gce-labels", env = "WARMPOOL_GCE_LABELS", default_value = "")]
    pub labels: String,
    #[arg(
        long = "gce-disk-gb",
        env = "WARMPOOL_GCE_DISK_GB",
        default_value_t = 20
    )]
    pub disk_gb: u32,
    #[arg(
        long = "gce-disk-type",
        env = "WARMPOOL_GCE_DISK_TYPE",
        default_value = "pd-balanced"
    )]
    pub disk_type: String,
    /// Spot VMs (cheaper; Compute Engine may preempt them: their games move to other VMs).
    #[arg(long = "gce-spot", env = "WARMPOOL_GCE_SPOT", default_value_t = false)]
    pub spot: bool,
    /// The agent's container image (metadata `warmpool-agent-image`, read by the startup
    /// script).
    #[arg(
        long = "gce-agent-image",
        env = "WARMPOOL_GCE_AGENT_IMAGE",
        default_value = ""
    )]
    pub agent_image: String,
    /// The Redis URL the agents dial (default: WARMPOOL_REDIS_URL). Use `rediss://` with a
    /// password when Redis is not on a private network.
    #[arg(
        long = "gce-agent-redis-url",
        env = "WARMPOOL_GCE_AGENT_REDIS_URL",
        hide_env_values = true
    )]
    pub agent_redis_url: Option<String>,
    /// Agent settings, `KEY=VALUE` separated by `;` or newlines, passed as metadata
    /// `warmpool-agent-env` (only agent settings: checked at start).
    #[arg(
        long = "gce-agent-env",
        env = "WARMPOOL_GCE_AGENT_ENV",
        default_value = ""
    )]
    pub agent_env: String,
    /// Client-side limit on insert calls per minute, retries included, below the project's
    /// quota.
    #[arg(
        long = "gce-max-inserts-per-min",
        env = "WARMPOOL_GCE_MAX_INSERTS_PER_MIN",
        default_value_t = 300
    )]
    pub max_inserts_per_min: u32,
    /// Client-side limit on reads (operation polls, lists) per minute.
    #[arg(
        long = "gce-max-reads-per-min",
        env = "WARMPOOL_GCE_MAX_READS_PER_MIN",
        default_value_t = 600
    )]
    pub max_reads_per_min: u32,
    /// How long one create may take, its zone operation and retries included, before the VM
    /// is given up.
    #[arg(
        long = "gce-operation-timeout-s",
        env = "WARMPOOL_GCE_OPERATION_TIMEOUT_S",
        value_parser = warmpool_core::config::secs,
        default_value = "180"
    )]
    pub operation_timeout: Duration,
    /// First delay between polls of a zone operation (doubling up to 5 s).
    #[arg(
        long = "gce-poll-ms",
        env = "WARMPOOL_GCE_POLL_MS",
        value_parser = warmpool_core::config::millis,
        default_value = "1000"
    )]
    pub poll: Duration,
    /// API endpoint override (tests point it at a fake on loopback).
    #[arg(long = "gce-endpoint", env = "WARMPOOL_GCE_ENDPOINT")]
    pub endpoint: Option<String>,
    /// `adc` (Application Default Credentials: the metadata server on Cloud Run / GKE, a key
    /// file locally) or `anonymous` (tests against a fake).
    #[arg(
        long = "gce-credentials",
        env = "WARMPOOL_GCE_CREDENTIALS",
        value_enum,
        default_value_t = Credentials::Adc
    )]
    pub credentials: Credentials,
}

/// How the provider authenticates to Compute Engine (`WARMPOOL_GCE_CREDENTIALS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Credentials {
    /// Application Default Credentials.
    Adc,
    /// None: for a fake Compute Engine on loopback.
    Anonymous,
}

/// Validated Compute Engine settings.
#[derive(Debug, Clone)]
pub struct GceSettings {
    pub pool: String,
    pub project: String,
    pub zones: Vec<String>,
    pub machine_type: String,
    pub image: String,
    pub instance_template: Option<String>,
    pub network: String,
    pub subnetwork: Option<String>,
    pub external_ip: bool,
    pub service_account: Option<String>,
    pub tags: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub disk_gb: u32,
    pub disk_type: String,
    pub spot: bool,
    pub agent_image: String,
    pub agent_redis_url: String,
    pub agent_env: Vec<(String, String)>,
    pub max_inserts_per_min: u32,
    pub max_reads_per_min: u32,
    pub operation_timeout: Duration,
    pub poll: Duration,
    pub endpoint: Option<String>,
    pub anonymous: bool,
}

fn bad(name: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::new(name, message)
}

/// Compute Engine names and label values: lowercase letters, digits and hyphens.
fn is_label_value(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Whether a Redis URL's host is this machine (`localhost`, 127.0.0.0/8, `::1`).
fn points_at_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host_port = rest.split('/').next().unwrap_or("");
    let host_port = host_port.rsplit_once('@').map_or(host_port, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

impl GceConfig {
    /// Checks every value; `redis_url` is the orchestrator's (the agents' default).
    pub fn settings(&self, pool: &str, redis_url: &str) -> Result<GceSettings, ConfigError> {
        let project = self
            .project
            .clone()
            .filter(|p| !p.trim().is_empty())
            .ok_or_else(|| {
                bad(
                    "WARMPOOL_GCE_PROJECT",
                    "required with WARMPOOL_PROVIDER=gce",
                )
            })?;
        let zones = list(self.zones.as_deref().unwrap_or(""));
        if zones.is_empty() {
            return Err(bad(
                "WARMPOOL_GCE_ZONES",
                "required with WARMPOOL_PROVIDER=gce (comma-separated, in order of preference)",
            ));
        }
        if let Some(z) = zones.iter().find(|z| !is_label_value(z)) {
            return Err(bad(
                "WARMPOOL_GCE_ZONES",
                format!("{z:?} is not a zone name"),
            ));
        }
        // wp-POOL-N must be a valid instance name (63 characters at most).
        if pool.len() > 40 || !pool.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(bad(
                "WARMPOOL_POOL",
                "with WARMPOOL_PROVIDER=gce: a lowercase letter first, 40 characters at most \
                 (instance names are wp-POOL-N)",
            ));
        }
        let mut labels = BTreeMap::new();
        for pair in list(&self.labels) {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(bad(
                    "WARMPOOL_GCE_LABELS",
                    format!("{pair:?}: expected key=value"),
                ));
            };
            let (k, v) = (k.trim(), v.trim());
            if k.is_empty() || !is_label_value(k) || !is_label_value(v) {
                return Err(bad(
                    "WARMPOOL_GCE_LABELS",
                    format!("{pair:?}: keys and values are 1-63 of [a-z0-9_-]"),
                ));
            }
            if k == POOL_LABEL || k == VM_LABEL {
                return Err(bad(
                    "WARMPOOL_GCE_LABELS",
                    format!("{k} is set by warmpool"),
                ));
            }
            labels.insert(k.to_string(), v.to_string());
        }
        // `;` or newlines between settings: values may hold commas (log filters do).
        let agent_env = warmpool_core::agent_env::parse(&self.agent_env.replace(';', "\n"))
            .map_err(|(n, problem)| {
                bad("WARMPOOL_GCE_AGENT_ENV", format!("setting {n}: {problem}"))
            })?;
        if self.max_inserts_per_min == 0 {
            return Err(bad(
                "WARMPOOL_GCE_MAX_INSERTS_PER_MIN",
                "must be greater than 0",
            ));
        }
        if self.max_reads_per_min == 0 {
            return Err(bad(
                "WARMPOOL_GCE_MAX_READS_PER_MIN",
                "must be greater than 0",
            ));
        }
        if self.operation_timeout.is_zero() {
            return Err(bad(
                "WARMPOOL_GCE_OPERATION_TIMEOUT_S",
                "must be greater than 0",
            ));
        }
        if self.disk_gb == 0 {
            return Err(bad("WARMPOOL_GCE_DISK_GB", "must be greater than 0"));
        }
        let anonymous = self.credentials == Credentials::Anonymous;
        if self.poll < Duration::from_millis(10) {
            return Err(bad("WARMPOOL_GCE_POLL_MS", "must be at least 10"));
        }
        if self.instance_template.is_none() && self.agent_image.is_empty() {
            return Err(bad(
                "WARMPOOL_GCE_AGENT_IMAGE",
                "required with WARMPOOL_PROVIDER=gce unless WARMPOOL_GCE_INSTANCE_TEMPLATE \
                 provides the agent",
            ));
        }
        let agent_redis_url = self
            .agent_redis_url
            .clone()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| redis_url.to_string());
        // Against the real API, a loopback Redis is the orchestrator's own view (a sidecar, a
        // tunnel): the VMs would dial themselves.
        if self.endpoint.is_none() && points_at_loopback(&agent_redis_url) {
            return Err(bad(
                "WARMPOOL_GCE_AGENT_REDIS_URL",
                "the agents' Redis URL points at loopback, which a VM cannot reach: set the \
                 address the VMs dial",
            ));
        }
        Ok(GceSettings {
            pool: pool.to_string(),
            project,
            zones,
            machine_type: self.machine_type.clone(),
            image: self.image.clone(),
            instance_template: self.instance_template.clone().filter(|t| !t.is_empty()),
            network: self.network.clone(),
            subnetwork: self.subnetwork.clone().filter(|s| !s.is_empty()),
            external_ip: self.external_ip,
            service_account: Some(self.service_account.clone())
                .filter(|s| !s.is_empty() && s != "none"),
            tags: list(&self.tags),
            labels,
            disk_gb: self.disk_gb,
            disk_type: self.disk_type.clone(),
            spot: self.spot,
            agent_image: self.agent_image.clone(),
            agent_redis_url,
            agent_env,
            max_inserts_per_min: self.max_inserts_per_min,
            max_reads_per_min: self.max_reads_per_min,
            operation_timeout: self.operation_timeout,
            poll: self.poll,
            endpoint: self.endpoint.clone().filter(|e| !e.is_empty()),
            anonymous,
        })
    }
}

/// What one VM's instance carries besides the shared settings.
#[derive(Debug, Clone)]
pub struct VmMetadata<'a> {
    pub vm_id: &'a str,
    pub capacity: u32,
    pub secret: &'a str,
}

impl GceSettings {
    /// The instance name of VM `vm_id` (`wp-POOL-N`): deterministic, so a retried create
    /// finds the instance it already made.
    pub fn instance_name(&self, vm_id: &str) -> String {
        format!("wp-{vm_id}")
    }

    /// The label filter that lists this pool's instances.
    pub fn list_filter(&self) -> String {
        format!("labels.{POOL_LABEL} = {}", self.pool)
    }

    /// The metadata items the agent boots from (see `agent/src/metadata.rs`).
    pub fn metadata_items(&self, vm: &VmMetadata<'_>) -> Vec<(String, String)> {
        let mut env = self.agent_env.clone();
        // The agent deletes its own instance when it is orphaned or retired (dead-man's switch),
        // through the same API endpoint as ours.
        if !env.iter().any(|(k, _)| k == "WARMPOOL_AGENT_ON_EXIT") {
            env.push(("WARMPOOL_AGENT_ON_EXIT".into(), "delete-instance".into()));
        }
        if let Some(endpoint) = &self.endpoint {
            env.push(("WARMPOOL_AGENT_COMPUTE_ENDPOINT".into(), endpoint.clone()));
        }
        let env_text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        let mut items = vec![
            ("warmpool-vm-id".to_string(), vm.vm_id.to_string()),
            ("warmpool-pool".into(), self.pool.clone()),
            ("warmpool-redis-url".into(), self.agent_redis_url.clone()),
            ("warmpool-vm-secret".into(), vm.secret.to_string()),
            ("warmpool-capacity".into(), vm.capacity.to_string()),
            ("warmpool-agent-env".into(), env_text),
        ];
        if self.instance_template.is_none() {
            items.push(("warmpool-agent-image".into(), self.agent_image.clone()));
            items.push(("startup-script".into(), STARTUP_SCRIPT.to_string()));
        }
        items
    }

    /// The body of the insert request for VM `vm` in `zone`.
    pub fn instance(&self, zone: &str, vm: &VmMetadata<'_>) -> Instance {
        let mut labels: std::collections::HashMap<String, String> =
            self.labels.clone().into_iter().collect();
        labels.insert(POOL_LABEL.into(), self.pool.clone());
        labels.insert(VM_LABEL.into(), vm.vm_id.to_string());
        let metadata =
            Metadata::new().set_items(self.metadata_items(vm).into_iter().map(|(k, v)| {
                google_cloud_compute_v1::model::metadata::Items::new()
                    .set_key(k)
                    .set_value(v)
            }));
        let instance = Instance::new()
            .set_name(self.instance_name(vm.vm_id))
            .set_labels(labels)
            .set_metadata(metadata);
        if self.instance_template.is_some() {
            return instance;
        }
        let mut nic = NetworkInterface::new().set_network(self.network.clone());
        if let Some(sub) = &self.subnetwork {
            nic = nic.set_subnetwork(sub.clone());
        }
        if self.external_ip {
            nic = nic.set_access_configs([AccessConfig::new().set_name("external-nat")]);
        }
        let mut scheduling_ = Scheduling::new();
        if self.spot {
            scheduling_ = scheduling_
                .set_provisioning_model(scheduling::ProvisioningModel::Spot)
                // A preempted Spot VM is deleted, not kept stopped.
                .set_instance_termination_action(scheduling::InstanceTerminationAction::Delete)
                .set_automatic_restart(false)
                .set_on_host_maintenance(scheduling::OnHostMaintenance::Terminate);
        }
        let mut instance = instance
            .set_machine_type(format!("zones/{zone}/machineTypes/{}", self.machine_type))
            .set_disks([AttachedDisk::new()
                .set_boot(true)
                .set_auto_delete(true)
                .set_initialize_params(
                    AttachedDiskInitializeParams::new()
                        .set_source_image(self.image.clone())
                        .set_disk_size_gb(i64::from(self.disk_gb))
                        .set_disk_type(format!("zones/{zone}/diskTypes/{}", self.disk_type)),
                )])
            .set_network_interfaces([nic])
            .set_scheduling(scheduling_);
        if !self.tags.is_empty() {
            instance = instance.set_tags(Tags::new().set_items(self.tags.clone()));
        }
        if let Some(email) = &self.service_account {
            instance = instance.set_service_accounts([ServiceAccount::new()
                .set_email(email.clone())
                .set_scopes(["https://www.googleapis.com/auth/cloud-platform"])]);
        }
        instance
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> GceConfig {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            gce: GceConfig,
        }
        let mut c = Wrapper::parse_from(["x"]).gce;
        c.project = Some("proj".into());
        c.zones = Some("europe-west1-b, europe-west1-c".into());
        c.agent_image = "europe-docker.pkg.dev/proj/warmpool/agent:1".into();
        c
    }

    #[test]
    fn agent_settings_are_checked_at_start_and_may_hold_commas() {
        let mut c = config();
        c.agent_env = "WARMPOOL_AGENT_SLOTS=2; WARMPOOL_LOG=warn,warmpool_agent=debug".into();
        let s = c.settings("games", "redis://r").unwrap();
        assert_eq!(s.agent_env[1].1, "warn,warmpool_agent=debug");
        c.agent_env = "WARMPOOL_AGENT_SLOTS=2;PATH=/tmp".into();
        let err = c.settings("games", "redis://r").unwrap_err();
        assert_eq!(err.name, "WARMPOOL_GCE_AGENT_ENV");
        assert!(err.message.contains("PATH"), "{}", err.message);
    }

    #[test]
    fn vms_are_not_sent_to_a_loopback_redis_on_the_real_api() {
        let c = config();
        for url in [
            "redis://127.0.0.1:6380",
            "rediss://:pw@localhost:6379/0",
            "redis://[::1]:6379",
        ] {
            assert_eq!(
                c.settings("games", url).unwrap_err().name,
                "WARMPOOL_GCE_AGENT_REDIS_URL",
                "{url}"
            );
        }
        assert!(c.settings("games", "rediss://:pw@10.0.0.3:6379").is_ok());
        let mut fake = config();
        fake.endpoint = Some("http://127.0.0.1:9".into());
        assert!(fake.settings("games", "redis://127.0.0.1:6380").is_ok());
    }

    #[test]
    fn a_missing_required_value_is_named() {
        let mut c = config();
        c.project = None;
        assert_eq!(
            c.settings("games", "redis://r").unwrap_err().name,
            "WARMPOOL_GCE_PROJECT"
        );
        let mut c = config();
        c.zones = Some(" ,".into());
        assert_eq!(
            c.settings("games", "redis://r").unwrap_err().name,
            "WARMPOOL_GCE_ZONES"
        );
        let mut c = config();
        c.agent_image = String::new();
        assert_eq!(
            c.settings("games", "redis://r").unwrap_err().name,
            "WARMPOOL_GCE_AGENT_IMAGE"
        );
        let mut c = config();
        c.labels = "team=games,warmpool-pool=x".into();
        assert_eq!(
            c.settings("games", "redis://r").unwrap_err().name,
            "WARMPOOL_GCE_LABELS"
        );
        let mut c = config();
        c.poll = Duration::from_millis(1);
        assert_eq!(
            c.settings("games", "redis://r").unwrap_err().name,
            "WARMPOOL_GCE_POLL_MS"
        );
    }

    #[test]
    fn the_instance_carries_its_name_labels_and_the_agents_metadata() {
        let mut c = config();
        c.labels = "team=games".into();
        c.spot = true;
        c.service_account = "vm@proj.iam.gserviceaccount.com".into();
        let s = c.settings("games", "rediss://:pw@10.0.0.3:6379").unwrap();
        assert_eq!(s.zones, ["europe-west1-b", "europe-west1-c"]);
        let i = s.instance(
            "europe-west1-c",
            &VmMetadata {
                vm_id: "games-7",
                capacity: 8,
                secret: "s3cret",
            },
        );
        assert_eq!(i.name.as_deref(), Some("wp-games-7"));
        assert_eq!(i.labels.get(POOL_LABEL).map(String::as_str), Some("games"));
        assert_eq!(i.labels.get(VM_LABEL).map(String::as_str), Some("games-7"));
        assert_eq!(i.labels.get("team").map(String::as_str), Some("games"));
        assert_eq!(
            i.machine_type.as_deref(),
            Some("zones/europe-west1-c/machineTypes/e2-standard-2")
        );
        let items: BTreeMap<_, _> = i
            .metadata
            .as_ref()
            .map(|m| {
                m.items
                    .iter()
                    .map(|it| {
                        (
                            it.key.clone().unwrap_or_default(),
                            it.value.clone().unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(items["warmpool-vm-id"], "games-7");
        assert_eq!(items["warmpool-redis-url"], "rediss://:pw@10.0.0.3:6379");
        assert_eq!(items["warmpool-vm-secret"], "s3cret");
        assert!(items["warmpool-agent-env"].contains("WARMPOOL_AGENT_ON_EXIT=delete-instance"));
        assert!(items["startup-script"].starts_with("#!"));
        let sched = i.scheduling.as_ref().unwrap();
        assert_eq!(
            sched.provisioning_model,
            Some(scheduling::ProvisioningModel::Spot)
        );
        assert_eq!(i.service_accounts.len(), 1);
    }

    #[test]
    fn a_template_leaves_the_machine_to_the_template() {
        let mut c = config();
        c.instance_template = Some("projects/proj/global/instanceTemplates/agent".into());
        let s = c.settings("games", "redis://r").unwrap();
        let i = s.instance(
            "europe-west1-b",
            &VmMetadata {
                vm_id: "games-1",
                capacity: 8,
                secret: "x",
            },
        );
        assert!(i.machine_type.is_none() && i.disks.is_empty());
        assert_eq!(i.name.as_deref(), Some("wp-games-1"));
    }
}
