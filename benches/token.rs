//! Token engine speed: a cache hit (the per-connection hot path) and a cold signing.
//! Targets on the 2-core reference machine: hit <= 1 µs, signing <= 50 µs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use criterion::{criterion_group, criterion_main, Criterion};
use pg_iam_proxy::iam::{
    sign_token, CacheSettings, CredentialSource, SystemClock, TokenCache, TokenKey, TokenRequest,
};

fn creds() -> Credentials {
    Credentials::new(
        "ASIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        Some("IQoJb3JpZ2luX2VjE".repeat(50)),
        None,
        "bench",
    )
}

fn bench_sign(c: &mut Criterion) {
    let creds = creds();
    let request = TokenRequest {
        host: "mydb.cluster-c1a2b3.us-east-1.rds.amazonaws.com",
        port: 5432,
        user: "iam_dbuser",
        region: "us-east-1",
    };
    c.bench_function("token/sign (cold, session credentials)", |b| {
        b.iter(|| sign_token(&creds, &request, SystemTime::now()).expect("sign"))
    });
}

fn bench_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let source = CredentialSource::new(
        Some(SharedCredentialsProvider::new(creds())),
        pg_iam_proxy::iam::DEFAULT_CREDENTIALS_TIMEOUT,
    );
    let cache = TokenCache::new(
        HashMap::from([(None, Arc::new(source))]),
        CacheSettings::default(),
        Arc::new(SystemClock),
    );
    let key = TokenKey {
        host: "mydb.cluster-c1a2b3.us-east-1.rds.amazonaws.com".into(),
        port: 5432,
        user: "iam_dbuser".into(),
        region: "us-east-1".into(),
        role: None,
    };
    rt.block_on(cache.token(&key)).expect("warm");
    c.bench_function("token/cache hit", |b| {
        b.to_async(&rt)
            .iter(|| async { cache.token(&key).await.expect("hit") })
    });
}

criterion_group!(benches, bench_hit, bench_sign);
criterion_main!(benches);
