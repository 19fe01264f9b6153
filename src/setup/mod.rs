//! Set-up and tear-down for IAM database authentication: the database user (`db_user`),
//! the IAM policy and role (`iam`, behind the default-on `setup-iam` feature), and the caller
//! identity (`whoami`).

pub mod db_user;
#[cfg(feature = "setup-iam")]
pub mod iam;
pub mod whoami;
