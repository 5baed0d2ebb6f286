//! The decision: what to do after a failure. Pure.
//!
//! This first version covers what the gateway needs before the full engine:
//! client-side errors go back to the client, a model the provider does not have
//! skips its other keys, everything else moves to the next target.

use super::failure::{Failure, Reason};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Try the next profile of the same model (key rotation), else the next model.
    NextTarget,
    /// Skip the remaining profiles of this model.
    NextModel,
    /// Stop and return this failure to the client.
    ReturnToClient,
}

pub fn decide(failure: &Failure) -> Action {
    match failure.reason {
        Reason::ContentPolicy | Reason::BadRequest | Reason::Aborted | Reason::Unknown => {
            Action::ReturnToClient
        }
        Reason::ModelNotFound | Reason::ContextOverflow => Action::NextModel,
        Reason::RateLimit
        | Reason::Overloaded
        | Reason::Timeout
        | Reason::ServerError
        | Reason::Auth
        | Reason::AuthPermanent
        | Reason::Billing => Action::NextTarget,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::failure::Phase;

    #[test]
    fn client_errors_are_returned() {
        for (reason, action) in [
            (Reason::BadRequest, Action::ReturnToClient),
            (Reason::ContentPolicy, Action::ReturnToClient),
            (Reason::Unknown, Action::ReturnToClient),
            (Reason::RateLimit, Action::NextTarget),
            (Reason::Auth, Action::NextTarget),
            (Reason::ModelNotFound, Action::NextModel),
        ] {
            assert_eq!(
                decide(&Failure::new(reason, Phase::Status, "x")),
                action,
                "{reason}"
            );
        }
    }
}
