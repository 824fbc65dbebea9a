//! Service changes cost O(the change): with 10k Services present, adding, re-weighting or
//! removing one takes about as long as with 10, and leaves the others' compiled state shared
//! with the snapshot the workers already have.
//!
//! Timings are printed (`cargo test -p tapswitch-control --release --test nat_config --
//! --nocapture`), not asserted: the assertions are on what is shared, which is what makes the
//! time independent of the number of Services.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tapswitch_control::config::ServiceConfig;
use tapswitch_control::{Config, Switch};
use tapswitch_dataplane::tables::service::PROTO_TCP;
use tapswitch_dataplane::tables::{Frontend, Service, Target};

const BASE: &str = r#"
[[interface]]
vlan = 10
address = "10.42.0.1/16"
"#;

fn service(i: usize) -> ServiceConfig {
    ServiceConfig {
        name: format!("svc-{i}"),
        vip: format!("10.96.{}.{}", i / 250, i % 250 + 1),
        port: 80,
        backends: (0..3)
            .map(|b| format!("10.42.{}.{}:8080", i % 200, b + 2).as_str().into())
            .collect(),
        ..ServiceConfig::default()
    }
}

fn vip(i: usize) -> Frontend {
    Frontend {
        proto: PROTO_TCP,
        addr: service(i).vip.parse().unwrap(),
        port: 80,
    }
}

fn compiled(s: &Switch, f: &Frontend) -> Arc<Service> {
    match s.nat_rules().frontends.get(f) {
        Some(Target::Service(a)) => Arc::clone(a),
        other => panic!("{f:?}: {other:?}"),
    }
}

/// The median time of `op` over `rounds` Services numbered from `first`.
fn median(rounds: usize, first: usize, mut op: impl FnMut(usize)) -> Duration {
    let mut times: Vec<Duration> = (0..rounds)
        .map(|k| {
            let t = Instant::now();
            op(first + k);
            t.elapsed()
        })
        .collect();
    times.sort();
    times[rounds / 2]
}

fn measure(n: usize) -> (Duration, Duration, Duration) {
    let mut config = Config::from_toml(BASE).unwrap();
    config.services = (0..n).map(service).collect();
    let mut s = Switch::start(config).unwrap();
    let sample: Vec<(Frontend, Arc<Service>)> = (0..n)
        .step_by((n / 10).max(1))
        .map(|i| (vip(i), compiled(&s, &vip(i))))
        .collect();
    let first = 50_000;
    let add = median(21, first, |i| s.add_service(service(i)).unwrap());
    let set = median(21, first, |i| {
        s.set_service_backends(&format!("svc-{i}"), vec!["10.42.7.7:8080,weight=2".into()])
            .unwrap()
    });
    let del = median(21, first, |i| s.del_service(&format!("svc-{i}")).unwrap());
    for (f, before) in &sample {
        assert!(
            Arc::ptr_eq(&compiled(&s, f), before),
            "{f:?} was recompiled by changes to other Services"
        );
    }
    assert_eq!(s.nat_rules().frontends.len(), n);
    assert_eq!(s.config().services.len(), n);
    (add, set, del)
}

#[test]
fn one_service_change_costs_the_same_with_10_or_10k_services() {
    let small = measure(10);
    let large = measure(10_000);
    eprintln!("median per change      add        set-backends  del");
    eprintln!(
        "     10 Services   {:>10.1?} {:>12.1?} {:>10.1?}",
        small.0, small.1, small.2
    );
    eprintln!(
        " 10 000 Services   {:>10.1?} {:>12.1?} {:>10.1?}",
        large.0, large.1, large.2
    );
}
