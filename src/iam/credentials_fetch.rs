//! The single flight behind a [`super::CredentialSource`]: at most one provider call at a
//! time, run in its own task (a caller that gives up does not cancel it) and bounded by the
//! timeout; every caller that waits takes its outcome. A failure is remembered for
//! [`RETRY_SPACING`], so a burst of logins while STS refuses is one STS call, not one each.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use tokio::sync::watch;
use tokio::time::Instant;

use super::super::failure::{classify, Failure};
use super::super::{lock, TokenError};

/// A failed fetch is not repeated sooner than this; callers get its error meanwhile.
pub(crate) const RETRY_SPACING: Duration = Duration::from_secs(1);

/// Waiters give the fetch (bounded by the timeout) this much longer before they give up.
const WAIT_GRACE: Duration = Duration::from_secs(1);

#[derive(Default)]
struct State {
    creds: Option<Credentials>,
    fetching: bool,
    failure: Option<(Instant, TokenError)>,
}

pub(super) struct Fetcher {
    provider: Option<SharedCredentialsProvider>,
    timeout: Duration,
    /// For a role: its ARN and how to name the service in messages ("STS at URL").
    role: Option<(String, String)>,
    state: Mutex<State>,
    /// Bumped (under the state lock) each time a fetch ends.
    done: watch::Sender<u64>,
}

fn valid_past(t: SystemTime) -> impl Fn(&&Credentials) -> bool {
    move |c| c.expiry().is_none_or(|e| e > t)
}

impl Fetcher {
    pub(super) fn new(
        provider: Option<SharedCredentialsProvider>,
        timeout: Duration,
        role: Option<(String, String)>,
    ) -> Arc<Self> {
        Arc::new(Self {
            provider,
            timeout,
            role,
            state: Mutex::default(),
            done: watch::Sender::new(0),
        })
    }

    pub(super) fn provider(&self) -> Option<SharedCredentialsProvider> {
        self.provider.clone()
    }

    pub(super) fn cached(&self) -> Option<Credentials> {
        lock(&self.state).creds.clone()
    }

    fn error(&self, failure: &Failure) -> TokenError {
        match &self.role {
            Some((role, service)) => TokenError::AssumeRole {
                role: role.clone(),
                detail: failure.describe(service),
            },
            None => TokenError::Credentials {
                detail: failure.describe("the AWS credential chain"),
            },
        }
    }

    pub(super) async fn credentials(
        self: &Arc<Self>,
        now: SystemTime,
        wanted_until: SystemTime,
        usable_until: SystemTime,
    ) -> Result<Credentials, TokenError> {
        let mut done = {
            let mut state = lock(&self.state);
            if let Some(creds) = state.creds.as_ref().filter(valid_past(wanted_until)) {
                return Ok(creds.clone());
            }
            let Some(provider) = self.provider.clone() else {
                return Err(self.error(&Failure::Other(
                    "no credentials found in the AWS credential chain (environment, profile, \
                     SSO, web identity, container or instance metadata)"
                        .to_owned(),
                )));
            };
            let recent = state
                .failure
                .as_ref()
                .filter(|(at, _)| at.elapsed() < RETRY_SPACING)
                .map(|(_, e)| e.clone());
            if !state.fetching && recent.is_none() {
                state.fetching = true;
                tokio::spawn(self.clone().fetch(provider, now));
            }
            if let Some(creds) = state.creds.as_ref().filter(valid_past(usable_until)) {
                return Ok(creds.clone());
            }
            if let (false, Some(e)) = (state.fetching, recent) {
                return Err(e);
            }
            self.done.subscribe()
        };
        let waited = tokio::time::timeout(self.timeout + WAIT_GRACE, done.changed()).await;
        let state = lock(&self.state);
        match (&state.failure, state.creds.as_ref().filter(valid_past(now))) {
            (Some((_, e)), _) => Err(e.clone()),
            (None, Some(creds)) if waited.is_ok() => Ok(creds.clone()),
            _ => Err(self.error(&Failure::TimedOut(self.timeout))),
        }
    }

    /// One provider call; stores its outcome and wakes the waiters.
    async fn fetch(self: Arc<Self>, provider: SharedCredentialsProvider, now: SystemTime) {
        let outcome = match tokio::time::timeout(self.timeout, provider.provide_credentials()).await
        {
            Err(_) => Err(self.error(&Failure::TimedOut(self.timeout))),
            Ok(Err(e)) => Err(self.error(&classify(&e, self.timeout))),
            Ok(Ok(creds)) => match creds.expiry().filter(|e| *e <= now) {
                Some(expiry) => Err(self.error(&Failure::Other(format!(
                    "the credentials expired at {}; refresh them (e.g. `aws sso login`)",
                    humantime::format_rfc3339_seconds(expiry)
                )))),
                None => Ok(creds),
            },
        };
        let mut state = lock(&self.state);
        state.fetching = false;
        match outcome {
            Ok(creds) => {
                state.creds = Some(creds);
                state.failure = None;
            }
            Err(e) => {
                tracing::debug!(error = %e, "credential fetch failed");
                state.failure = Some((Instant::now(), e));
            }
        }
        self.done.send_modify(|n| *n += 1);
    }
}
