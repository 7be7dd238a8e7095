//! Why a replay could not start or finish.

use std::path::{Path, PathBuf};

/// Why a replay could not start or finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The input could not be opened or is not a pcap or pcapng capture.
    #[error("{path}: {why}")]
    Input {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// An output file could not be written.
    #[error("{path}: {why}")]
    Output {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

impl ReplayError {
    pub(super) fn with_input(self, path: &Path) -> ReplayError {
        match self {
            ReplayError::Input { why, .. } => ReplayError::Input { path: path.to_path_buf(), why },
            other => other,
        }
    }
}
