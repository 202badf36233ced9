//! The security floor: the highest security version this device has run. It only ever goes up, survives power
//! cuts (written atomically) and, if it cannot be read, stops updates rather than being taken as zero: a device
//! never installs a signed release below it (rollback to a known-vulnerable image).

use std::path::{Path, PathBuf};

/// The file, in the state directory.
pub const FLOOR_FILE: &str = "security-floor";

/// Why the floor cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    /// Reading or writing failed.
    #[error("the security floor {0}: {1}")]
    Io(String, std::io::Error),
    /// The file does not hold a number: updates stop until someone looks.
    #[error("the security floor in {0} is not a number; updates stop until it is repaired")]
    Corrupt(String),
}

/// The security floor in a state directory.
#[derive(Debug, Clone)]
pub struct SecurityFloor {
    path: PathBuf,
}

impl SecurityFloor {
    /// The floor kept in `state_dir`.
    pub fn in_dir(state_dir: &Path) -> SecurityFloor {
        SecurityFloor { path: state_dir.join(FLOOR_FILE) }
    }

    /// The floor now (0 before the first release).
    pub fn get(&self) -> Result<u64, FloorError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => text.trim().parse().map_err(|_| FloorError::Corrupt(self.path.display().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(FloorError::Io(self.path.display().to_string(), e)),
        }
    }

    /// Raises the floor to `version` if that is higher; never lowers it. Returns the floor after.
    pub fn raise(&self, version: u64) -> Result<u64, FloorError> {
        let now = self.get()?;
        if version <= now {
            return Ok(now);
        }
        hearth_fsutil::write_atomic(&self.path, format!("{version}\n").as_bytes(), 0o600)
            .map_err(|e| FloorError::Io(self.path.display().to_string(), e))?;
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_only_goes_up_survives_a_reload_and_fails_closed_when_unreadable() {
        let dir = tempfile::tempdir().expect("dir");
        let floor = SecurityFloor::in_dir(dir.path());
        assert_eq!(floor.get().expect("none yet"), 0);
        assert_eq!(floor.raise(7).expect("raise"), 7);
        assert_eq!(floor.raise(3).expect("never lower"), 7);
        assert_eq!(SecurityFloor::in_dir(dir.path()).get().expect("reload"), 7);
        std::fs::write(dir.path().join(FLOOR_FILE), "seven").expect("corrupt");
        assert!(matches!(floor.get(), Err(FloorError::Corrupt(_))));
        assert!(floor.raise(8).is_err(), "a corrupt floor is not overwritten blindly");
    }
}
