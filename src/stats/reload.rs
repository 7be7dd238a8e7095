//! Config reloads as figures: how many were put in force or refused, and
//! what the last one put in force carried over ([`super::Stats::reloads`]).

use std::sync::Mutex;

/// Config reloads since start, and what the last one put in force kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReloadStats {
    /// Reloads put in force.
    pub accepted: u64,
    /// Reloads refused (the running config stayed in force).
    pub refused: u64,
    /// What the last reload put in force carried over.
    pub kept: KeptStats,
}

/// What one reload carried over from the running policy's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeptStats {
    /// The reply limiter's buckets (1) or not (0).
    pub reply_buckets: u64,
    /// The redirect flow table (1) or not (0).
    pub flows: u64,
    /// The banner responder and its sessions (1) or not (0).
    pub sessions: u64,
    /// Rate-limit rules whose buckets carried over.
    pub rule_buckets: u64,
    /// Program rules whose instance (memory and map) carried over.
    pub programs: u64,
}

/// The reload figures, written by the one thread that reloads.
#[derive(Debug, Default)]
pub struct Reloads(Mutex<ReloadStats>);

impl Reloads {
    /// A reload was put in force, keeping `kept`.
    pub fn accepted(&self, kept: KeptStats) {
        let mut r = self.0.lock().unwrap_or_else(|e| e.into_inner());
        r.accepted += 1;
        r.kept = kept;
    }

    /// A reload was refused.
    pub fn refused(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).refused += 1;
    }

    /// The figures now.
    pub fn get(&self) -> ReloadStats {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
