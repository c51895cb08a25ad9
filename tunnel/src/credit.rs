//! Flow-control credit with checked arithmetic.
//!
//! Credit is what a peer may still send on one channel, in bytes of cost
//! (payload plus [`DATA_FRAME_OVERHEAD`](crate::DATA_FRAME_OVERHEAD) per
//! frame). Like h2's `Window`, it never wraps: a grant past [`MAX_CREDIT`] or
//! a spend beyond what is left is an error the session turns into a
//! `FLOW_CONTROL` reset of that channel.

/// The most credit a channel may hold, as in HTTP/2: 2^31 - 1 bytes.
pub const MAX_CREDIT: u32 = i32::MAX as u32;

/// Bytes a sender may still send on one channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Credit(u32);

/// Credit arithmetic that would break the flow-control contract.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CreditError {
    /// A grant would push the credit past 2^31 - 1.
    #[error("window overflow: {current} + {increment} bytes of credit exceeds 2147483647")]
    Overflow {
        /// Credit before the grant.
        current: u32,
        /// The grant.
        increment: u32,
    },
    /// A frame costs more than the credit left.
    #[error("frame costing {cost} bytes exceeds the {available} bytes of credit left")]
    Exceeded {
        /// What the frame costs.
        cost: u32,
        /// What was left.
        available: u32,
    },
}

impl Credit {
    /// No credit.
    pub const ZERO: Credit = Credit(0);

    /// Credit of `n` bytes, if `n` is at most [`MAX_CREDIT`].
    pub fn try_new(n: u32) -> Result<Self, CreditError> {
        Self::ZERO.checked_add(n)
    }

    /// The credit in bytes.
    pub fn get(self) -> u32 {
        self.0
    }

    /// Adds a grant, refusing to pass [`MAX_CREDIT`].
    pub fn checked_add(self, increment: u32) -> Result<Self, CreditError> {
        match self.0.checked_add(increment) {
            Some(n) if n <= MAX_CREDIT => Ok(Credit(n)),
            _ => Err(CreditError::Overflow {
                current: self.0,
                increment,
            }),
        }
    }

    /// Spends `cost` bytes, refusing to go below zero.
    pub fn checked_sub(self, cost: u32) -> Result<Self, CreditError> {
        self.0
            .checked_sub(cost)
            .map(Credit)
            .ok_or(CreditError::Exceeded {
                cost,
                available: self.0,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_past_max_is_overflow() {
        let c = Credit::try_new(MAX_CREDIT - 10).unwrap();
        assert_eq!(
            c.checked_add(11),
            Err(CreditError::Overflow {
                current: MAX_CREDIT - 10,
                increment: 11
            })
        );
        assert_eq!(c.checked_add(10).unwrap().get(), MAX_CREDIT);
        assert!(Credit::try_new(u32::MAX).is_err());
    }

    #[test]
    fn spend_beyond_credit_is_refused() {
        let c = Credit::try_new(100).unwrap();
        assert_eq!(c.checked_sub(100).unwrap(), Credit::ZERO);
        assert_eq!(
            c.checked_sub(101),
            Err(CreditError::Exceeded {
                cost: 101,
                available: 100
            })
        );
    }
}
