//! The decision: what a classified failure means for the rest of the request.
//!
//! One pure function of data (PRODUCT §3.2 and §8): the failure, the retry policy
//! and the situation (how many attempts this target had, whether another profile
//! of the same model is usable, how much time is left). Nothing else in the engine
//! decides whether to retry. Anything unrecognised is returned to the client.

use super::failure::{Failure, Reason};
use crate::config::RetryConfig;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Try the same target again after this wait.
    RetrySame { after: Duration },
    /// Rotate to the next profile of the same model (then, when none is left, the next model).
    NextProfile,
    /// Skip the remaining profiles of this model.
    NextModel,
    /// Skip to a model whose context window is larger than this one's.
    NextLargerModel,
    /// Stop: the client gets this failure.
    ReturnToClient,
}

/// What the executor knows when a failure arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Situation {
    /// Attempts made on this target so far, the failed one included (1 = first attempt).
    pub attempt: u32,
    /// Another profile of the same model can be tried now.
    pub other_profile_usable: bool,
    /// The target is already cooling down from another request's failure (or this
    /// attempt was its half-open probe) and a later target is usable: it is known to be
    /// failing, so it is not retried — the request fails over instead.
    pub target_cooling: bool,
    /// Time left before the request's deadline.
    pub remaining: Duration,
    /// The jittered backoff the next same-target retry would wait.
    pub backoff: Duration,
}

/// A status as `retry.trigger_codes` sees it: Anthropic's 529 "overloaded" is its 503.
fn trigger_status(status: u16) -> u16 {
    if status == 529 { 503 } else { status }
}

fn transient(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::RateLimit | Reason::Overloaded | Reason::ServerError | Reason::Timeout
    )
}

/// Decide what to do after `failure`.
pub fn decide(failure: &Failure, policy: &RetryConfig, now: &Situation) -> Action {
    let mut reason = failure.reason;
    if let Some(status) = failure.status {
        let triggers = policy.trigger_codes.contains(&trigger_status(status));
        // trigger_codes narrow: a transient HTTP failure whose status is not listed goes back.
        if transient(reason) && !triggers {
            return Action::ReturnToClient;
        }
        // …and widen: a listed status that would otherwise go back is treated as a server error.
        if triggers && matches!(reason, Reason::BadRequest | Reason::Unknown) {
            reason = Reason::ServerError;
        }
    }
    if reason == Reason::Timeout && !policy.trigger_on_timeout {
        return Action::ReturnToClient;
    }
    if matches!(reason, Reason::Auth | Reason::AuthPermanent) && !policy.trigger_on_auth_failure {
        return Action::ReturnToClient;
    }
    let can_retry = now.attempt < policy.max_attempts;
    match reason {
        Reason::RateLimit => {
            if now.other_profile_usable {
                return Action::NextProfile;
            }
            match failure.retry_after {
                Some(wait)
                    if can_retry
                        && wait <= Duration::from_millis(policy.max_retry_after_ms)
                        && wait < now.remaining =>
                {
                    Action::RetrySame { after: wait }
                }
                _ => Action::NextModel,
            }
        }
        Reason::Overloaded | Reason::ServerError | Reason::Timeout => {
            let wait = now.backoff.max(failure.retry_after.unwrap_or_default());
            if !failure.silent && can_retry && !now.target_cooling && wait < now.remaining {
                Action::RetrySame { after: wait }
            } else {
                Action::NextProfile
            }
        }
        Reason::Auth | Reason::AuthPermanent | Reason::Billing => Action::NextProfile,
        Reason::ModelNotFound => Action::NextModel,
        Reason::ContextOverflow => Action::NextLargerModel,
        Reason::ContentPolicy | Reason::BadRequest | Reason::Aborted | Reason::Unknown => {
            Action::ReturnToClient
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::failure::Phase;

    fn failure(reason: Reason, status: Option<u16>) -> Failure {
        let mut f = Failure::new(reason, Phase::Status, "x");
        f.status = status;
        f
    }

    const FIRST: Situation = Situation {
        attempt: 1,
        other_profile_usable: false,
        target_cooling: false,
        remaining: Duration::from_secs(60),
        backoff: Duration::from_millis(300),
    };

    #[test]
    fn the_table() {
        let policy = RetryConfig::default();
        let retry = Action::RetrySame {
            after: Duration::from_millis(300),
        };
        let rows = [
            (Reason::Overloaded, Some(529), retry),
            (Reason::ServerError, Some(500), retry),
            (Reason::Timeout, None, retry),
            (Reason::RateLimit, Some(429), Action::NextModel),
            (Reason::Auth, Some(401), Action::NextProfile),
            (Reason::AuthPermanent, Some(403), Action::NextProfile),
            (Reason::Billing, Some(429), Action::NextProfile),
            (Reason::ModelNotFound, Some(404), Action::NextModel),
            (Reason::ContextOverflow, Some(400), Action::NextLargerModel),
            (Reason::ContentPolicy, Some(400), Action::ReturnToClient),
            (Reason::BadRequest, Some(400), Action::ReturnToClient),
            (Reason::Aborted, None, Action::ReturnToClient),
            (Reason::Unknown, Some(302), Action::ReturnToClient),
        ];
        for (reason, status, want) in rows {
            assert_eq!(
                decide(&failure(reason, status), &policy, &FIRST),
                want,
                "{reason}"
            );
        }
    }

    #[test]
    fn a_target_already_cooling_is_not_retried() {
        let known_bad = Situation {
            target_cooling: true,
            ..FIRST
        };
        for (reason, status) in [
            (Reason::ServerError, Some(503)),
            (Reason::Overloaded, Some(529)),
            (Reason::Timeout, None),
        ] {
            assert_eq!(
                decide(
                    &failure(reason, status),
                    &RetryConfig::default(),
                    &known_bad
                ),
                Action::NextProfile,
                "{reason}"
            );
        }
    }

    #[test]
    fn retries_stop_at_max_attempts() {
        let policy = RetryConfig::default();
        let second = Situation {
            attempt: 2,
            ..FIRST
        };
        assert_eq!(
            decide(&failure(Reason::ServerError, Some(500)), &policy, &second),
            Action::NextProfile
        );
    }

    #[test]
    fn a_silent_route_is_not_retried() {
        let mut f = failure(Reason::Timeout, None);
        f.silent = true;
        assert_eq!(
            decide(&f, &RetryConfig::default(), &FIRST),
            Action::NextProfile
        );
    }

    #[test]
    fn waits_must_fit_the_deadline() {
        let tight = Situation {
            remaining: Duration::from_millis(100),
            ..FIRST
        };
        assert_eq!(
            decide(
                &failure(Reason::ServerError, Some(500)),
                &RetryConfig::default(),
                &tight
            ),
            Action::NextProfile
        );
    }

    #[test]
    fn rate_limits_keep_the_model_when_they_can() {
        let policy = RetryConfig::default();
        let mut f = failure(Reason::RateLimit, Some(429));
        // Another key of the same model first.
        let other = Situation {
            other_profile_usable: true,
            ..FIRST
        };
        assert_eq!(decide(&f, &policy, &other), Action::NextProfile);
        // Else a short Retry-After is waited out on the same target.
        f.retry_after = Some(Duration::from_secs(2));
        assert_eq!(
            decide(&f, &policy, &FIRST),
            Action::RetrySame {
                after: Duration::from_secs(2)
            }
        );
        // A long one (over retry.max_retry_after_ms) or one past the deadline moves on.
        f.retry_after = Some(Duration::from_secs(30));
        assert_eq!(decide(&f, &policy, &FIRST), Action::NextModel);
        f.retry_after = Some(Duration::from_secs(2));
        let tight = Situation {
            remaining: Duration::from_secs(1),
            ..FIRST
        };
        assert_eq!(decide(&f, &policy, &tight), Action::NextModel);
    }

    #[test]
    fn trigger_codes_narrow_and_widen() {
        let policy = RetryConfig {
            trigger_codes: vec![429, 503, 400],
            ..RetryConfig::default()
        };
        // 500 is no longer a trigger: returned.
        assert_eq!(
            decide(&failure(Reason::ServerError, Some(500)), &policy, &FIRST),
            Action::ReturnToClient
        );
        // 529 counts as 503.
        assert!(matches!(
            decide(&failure(Reason::Overloaded, Some(529)), &policy, &FIRST),
            Action::RetrySame { .. }
        ));
        // 400 is now a trigger: a bad request is retried like a server error.
        assert!(matches!(
            decide(&failure(Reason::BadRequest, Some(400)), &policy, &FIRST),
            Action::RetrySame { .. }
        ));
        // Transport timeouts have no status: governed by trigger_on_timeout alone.
        assert!(matches!(
            decide(&failure(Reason::Timeout, None), &policy, &FIRST),
            Action::RetrySame { .. }
        ));
    }

    #[test]
    fn trigger_switches() {
        let policy = RetryConfig {
            trigger_on_auth_failure: false,
            trigger_on_timeout: false,
            ..RetryConfig::default()
        };
        assert_eq!(
            decide(&failure(Reason::Auth, Some(401)), &policy, &FIRST),
            Action::ReturnToClient
        );
        assert_eq!(
            decide(&failure(Reason::Timeout, None), &policy, &FIRST),
            Action::ReturnToClient
        );
        // Billing is not an auth failure.
        assert_eq!(
            decide(&failure(Reason::Billing, Some(402)), &policy, &FIRST),
            Action::NextProfile
        );
    }
}
