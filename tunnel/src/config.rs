//! Session limits and their defaults (DESIGN.md, "Defaults").

use std::time::Duration;

/// Credit charged per `ChannelData` frame on top of its payload. Without it a
/// peer could make the receiver hold a quarter of a million one-byte frames
/// inside one 256 KiB window; with it, each frame costs at least 65 bytes.
pub const DATA_FRAME_OVERHEAD: u32 = 64;

/// The smallest receive window a channel is given, even when the session
/// budget is spent: one full data frame plus its overhead must fit, or the
/// channel could never move. Bounds the budget overshoot to
/// `max_channels × MIN_WINDOW` (see [`Config::receive_budget`]).
pub const MIN_WINDOW: u32 = 64 * 1024;

/// Limits of one session. Both sides use the same defaults; the control plane
/// announces its values in `Welcome`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Receive window granted to a new channel, bytes (default 256 KiB).
    pub initial_window: u32,
    /// Largest receive window auto-tuning may grow a channel to, bytes
    /// (default 16 MiB: fills a 50 ms link at ~335 MB/s).
    pub max_window: u32,
    /// Total receive window over all channels, bytes (default 64 MiB):
    /// what the peer can make this side hold. Auto-tuning never grows past
    /// it; new channels still get [`MIN_WINDOW`] when it is spent, so the
    /// hard bound is `receive_budget + max_channels × MIN_WINDOW`.
    pub receive_budget: u64,
    /// Largest `ChannelData` payload, bytes (default 32 KiB). Bounds how long
    /// a control frame waits behind a data frame already picked.
    pub max_data_frame: u32,
    /// Most channels open at once (default 4096); further opens by the peer
    /// are refused with `RESOURCE_EXHAUSTED`.
    pub max_channels: usize,
    /// Most bytes queued for sending per channel (default 16 MiB), whatever
    /// credit the peer grants.
    pub max_send_queue: u32,
    /// How long a channel open may wait for the peer's answer (default 30 s).
    pub open_timeout: Duration,
    /// How often the session measures its round trip with a ping while
    /// channels are open (default 5 s; zero turns pings off, and with them
    /// window auto-tuning). An idle session pings once, when it starts.
    pub ping_interval: Duration,
    /// Most upper-layer control frames (heartbeats, commands, job updates)
    /// waiting to be sent (default 1024).
    pub max_control_queue: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            initial_window: 256 * 1024,
            max_window: 16 * 1024 * 1024,
            receive_budget: 64 * 1024 * 1024,
            max_data_frame: 32 * 1024,
            max_channels: 4096,
            max_send_queue: 16 * 1024 * 1024,
            open_timeout: Duration::from_secs(30),
            ping_interval: Duration::from_secs(5),
            max_control_queue: 1024,
        }
    }
}

/// A [`Config`] value that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A window smaller than one full frame could never move data.
    #[error(
        "initial_window {0} is below the minimum of {MIN_WINDOW} bytes; raise it to at least {MIN_WINDOW}"
    )]
    InitialWindowTooSmall(u32),
    /// max_window must not be below initial_window.
    #[error(
        "max_window {max} is below initial_window {initial}; raise max_window or lower initial_window"
    )]
    MaxBelowInitial {
        /// The configured max_window.
        max: u32,
        /// The configured initial_window.
        initial: u32,
    },
    /// Windows above 2^31-1 overflow the peer's credit arithmetic.
    #[error("max_window {0} exceeds 2147483647 bytes; lower it")]
    MaxWindowTooLarge(u32),
    /// The frame size must be between 1 KiB and 1 MiB.
    #[error("max_data_frame {0} is outside 1024..=1048576 bytes")]
    FrameSize(u32),
    /// The budget must hold at least one initial window.
    #[error("receive_budget {budget} is below initial_window {initial}; raise receive_budget")]
    BudgetTooSmall {
        /// The configured receive_budget.
        budget: u64,
        /// The configured initial_window.
        initial: u32,
    },
    /// A zero limit would refuse everything.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
}

impl Config {
    /// Checks that the limits can work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.initial_window < MIN_WINDOW {
            return Err(ConfigError::InitialWindowTooSmall(self.initial_window));
        }
        if self.max_window < self.initial_window {
            return Err(ConfigError::MaxBelowInitial {
                max: self.max_window,
                initial: self.initial_window,
            });
        }
        if self.max_window > crate::MAX_CREDIT {
            return Err(ConfigError::MaxWindowTooLarge(self.max_window));
        }
        if !(1024..=1024 * 1024).contains(&self.max_data_frame)
            || self.max_data_frame + DATA_FRAME_OVERHEAD > MIN_WINDOW
        {
            return Err(ConfigError::FrameSize(self.max_data_frame));
        }
        if self.receive_budget < u64::from(self.initial_window) {
            return Err(ConfigError::BudgetTooSmall {
                budget: self.receive_budget,
                initial: self.initial_window,
            });
        }
        if self.max_channels == 0 {
            return Err(ConfigError::Zero("max_channels"));
        }
        if self.max_send_queue == 0 {
            return Err(ConfigError::Zero("max_send_queue"));
        }
        if self.max_control_queue == 0 {
            return Err(ConfigError::Zero("max_control_queue"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn window_below_one_frame_is_rejected_with_the_fix() {
        let cfg = Config {
            initial_window: 1000,
            ..Config::default()
        };
        let err = cfg.validate().unwrap_err();
        assert_eq!(err, ConfigError::InitialWindowTooSmall(1000));
        assert!(err.to_string().contains("raise it to at least 65536"));
    }

    #[test]
    fn max_window_below_initial_is_rejected() {
        let cfg = Config {
            max_window: 128 * 1024,
            ..Config::default()
        };
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::MaxBelowInitial { .. })
        ));
    }

    #[test]
    fn oversize_frames_are_rejected() {
        let cfg = Config {
            max_data_frame: 2 * 1024 * 1024,
            ..Config::default()
        };
        assert_eq!(cfg.validate(), Err(ConfigError::FrameSize(2 * 1024 * 1024)));
    }
}
