//! The lab's settings, shared by `serve` and `worker`: authentication, default quotas, bounds
//! on completions, job attempts and the drain time on SIGTERM. One struct is the command line
//! (with environment variables) and the running configuration.

use clap::{Args, ValueEnum};

use crate::db::jobs::ClaimRules;
use crate::identity::Quota;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// `Authorization: Bearer ep-...` on every request but /health and /ready.
    Keys,
    /// No keys: every caller is the admin `local` (one person's service).
    None,
}

#[derive(Args, Debug, Clone)]
pub struct LabArgs {
    /// keys or none. Default: none when binding a loopback address, keys otherwise.
    #[arg(long, env = "EIGENPRUNE_AUTH")]
    pub auth: Option<AuthMode>,
    /// Let non-admins export base models (GET /v1/models/{base}/export).
    #[arg(long, env = "EIGENPRUNE_ALLOW_BASE_EXPORT")]
    pub allow_base_export: bool,
    /// Default per-user quota: jobs running at once (0: no limit).
    #[arg(long, env = "EIGENPRUNE_QUOTA_RUNNING_JOBS", default_value_t = 2)]
    pub quota_running_jobs: u64,
    /// Default per-user quota: jobs waiting to run (0: no limit).
    #[arg(long, env = "EIGENPRUNE_QUOTA_QUEUED_JOBS", default_value_t = 20)]
    pub quota_queued_jobs: u64,
    /// Default per-user quota: job seconds over the last 24 hours (0: no limit).
    #[arg(
        long,
        env = "EIGENPRUNE_QUOTA_GPU_SECONDS_PER_DAY",
        default_value_t = 0
    )]
    pub quota_gpu_seconds_per_day: u64,
    /// Default per-user quota: completion sequences at once, per replica (0: no limit).
    #[arg(long, env = "EIGENPRUNE_QUOTA_SEQUENCES", default_value_t = 64)]
    pub quota_sequences: u64,
    /// Default per-user quota: requests per minute, per replica (0: no limit).
    #[arg(
        long,
        env = "EIGENPRUNE_QUOTA_REQUESTS_PER_MINUTE",
        default_value_t = 1200
    )]
    pub quota_requests_per_minute: u64,
    /// Sequences one completion request may ask for (prompts x max(n, best_of)).
    #[arg(
        long,
        env = "EIGENPRUNE_MAX_SEQUENCES_PER_REQUEST",
        default_value_t = 128
    )]
    pub max_sequences_per_request: usize,
    /// Sequences waiting to join a model's batch beyond which completions get 429.
    #[arg(long, env = "EIGENPRUNE_MAX_WAITING_SEQUENCES", default_value_t = 256)]
    pub max_waiting_sequences: usize,
    /// Attempts of a job whose worker keeps dying before it fails (`worker_lost`).
    #[arg(long, env = "EIGENPRUNE_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// Seconds SIGTERM/SIGINT waits for streams and running jobs before exiting.
    #[arg(long, env = "EIGENPRUNE_DRAIN_SECS", default_value_t = 20)]
    pub drain_secs: u64,
}

impl Default for LabArgs {
    /// The command line's defaults (embedding and tests).
    fn default() -> Self {
        use clap::FromArgMatches;
        let cmd = Self::augment_args(clap::Command::new("lab").no_binary_name(true));
        let matches = cmd
            .try_get_matches_from(std::iter::empty::<String>())
            .expect("LabArgs defaults parse");
        Self::from_arg_matches(&matches).expect("LabArgs defaults")
    }
}

fn limit(v: u64) -> Option<u64> {
    (v > 0).then_some(v)
}

impl LabArgs {
    /// The quota of a user who overrides nothing.
    pub fn default_quota(&self) -> Quota {
        Quota {
            running_jobs: limit(self.quota_running_jobs),
            queued_jobs: limit(self.quota_queued_jobs),
            gpu_seconds_per_day: limit(self.quota_gpu_seconds_per_day),
            sequences: limit(self.quota_sequences),
            requests_per_minute: limit(self.quota_requests_per_minute),
        }
    }

    /// The mode for a server bound to `addr`: as given, else by whether it is loopback.
    pub fn auth_for(&self, addr: &std::net::SocketAddr) -> AuthMode {
        self.auth.unwrap_or(if addr.ip().is_loopback() {
            AuthMode::None
        } else {
            AuthMode::Keys
        })
    }

    pub fn claim_rules(&self, lease_secs: i64) -> ClaimRules {
        ClaimRules {
            lease_secs,
            max_attempts: i64::from(self.max_attempts.max(1)),
            running_jobs: limit(self.quota_running_jobs).map(|v| v as i64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_on_loopback_keys_elsewhere_unless_told() {
        let lab = LabArgs::default();
        assert_eq!(
            lab.auth_for(&"127.0.0.1:8080".parse().unwrap()),
            AuthMode::None
        );
        assert_eq!(lab.auth_for(&"[::1]:8080".parse().unwrap()), AuthMode::None);
        assert_eq!(
            lab.auth_for(&"0.0.0.0:8080".parse().unwrap()),
            AuthMode::Keys
        );
        let told = LabArgs {
            auth: Some(AuthMode::Keys),
            ..LabArgs::default()
        };
        assert_eq!(
            told.auth_for(&"127.0.0.1:8080".parse().unwrap()),
            AuthMode::Keys
        );
        assert_eq!(lab.default_quota().running_jobs, Some(2));
        assert_eq!(lab.default_quota().gpu_seconds_per_day, None);
    }
}
