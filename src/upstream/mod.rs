//! The upstream side: TCP + TLS to the database ([`connect`], [`tls`], [`connect_to`]) and the login as the
//! IAM database user with a token as the password ([`auth`]), put together for no client in
//! particular in [`login`]; for pooled connections, the reset between clients ([`reset`])
//! and the next client's startup parameters and greeting ([`params`]), both reading answers
//! through [`exchange`]; for Aurora clusters, where new connections go ([`topology`]).

pub mod auth;
pub mod connect;
pub mod connect_to;
pub mod exchange;
pub mod login;
pub mod params;
#[cfg(test)]
mod params_tests;
pub mod pooled;
pub mod reset;
pub mod tls;
pub mod topology;
