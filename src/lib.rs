//! pg-iam-proxy: a local Postgres proxy that logs in to AWS Aurora / RDS PostgreSQL with IAM
//! database authentication on behalf of any client.

pub mod iam;
