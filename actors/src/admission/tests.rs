use super::*;
use proptest::prelude::*;

fn demand(entries: &[(u64, &str, f64)]) -> BTreeMap<u64, NodeDemand> {
    let mut d: BTreeMap<u64, NodeDemand> = BTreeMap::new();
    for &(node, tenant, mu) in entries {
        d.entry(node).or_default().insert(tenant.to_owned(), mu);
    }
    d
}

fn reservations(entries: &[(&str, f64)]) -> BTreeMap<String, f64> {
    entries.iter().map(|(t, v)| ((*t).to_owned(), *v)).collect()
}

#[test]
fn a_tenant_on_one_node_gets_its_whole_reservation_there() {
    let res = reservations(&[("gold", 600.0)]);
    let d = demand(&[(1, "gold", 600.0), (2, "free", 3000.0), (3, "free", 3000.0)]);
    let b1 = budgets(1, &res, 1000.0, &d);
    let b2 = budgets(2, &res, 1000.0, &d);
    let b3 = budgets(3, &res, 1000.0, &d);
    // Nearly all of gold's reservation where its traffic is (the rest is the floor that
    // lets a node's first requests in).
    assert!(b1.reserved["gold"] > 0.97 * 600.0, "{b1:?}");
    let total: f64 = [&b1, &b2, &b3].iter().map(|b| b.reserved["gold"]).sum();
    assert!((total - 600.0).abs() < 1e-6);
    // The 400 MU/min of spare goes where best effort is asked for.
    let spare: f64 = [&b1, &b2, &b3].iter().map(|b| b.best_effort).sum();
    assert!((spare - 400.0).abs() < 1e-6, "{spare}");
    assert!(b2.best_effort > 190.0 && b3.best_effort > 190.0);
}

#[test]
fn a_node_with_no_demand_yet_gets_an_even_part_of_unasked_spare() {
    // Nodes 2 and 3 serve 300 MU/min each of best effort; node 1 just restarted and has
    // asked for nothing yet. The 4,400 MU/min nobody asked for is split evenly, so its
    // first requests are not refused while the fleet is mostly idle.
    let mut d = demand(&[(2, "free", 300.0), (3, "free", 300.0)]);
    // It gossips an empty demand.
    d.insert(1, NodeDemand::default());
    let none = reservations(&[]);
    let b1 = budgets(1, &none, 5000.0, &d);
    let b2 = budgets(2, &none, 5000.0, &d);
    assert!((b1.best_effort - 4400.0 / 3.0).abs() < 1e-6, "{b1:?}");
    assert!(
        (b2.best_effort - (300.0 + 4400.0 / 3.0)).abs() < 1e-6,
        "{b2:?}"
    );
}

#[test]
fn an_unused_reservation_lends_its_capacity_to_best_effort() {
    let res = reservations(&[("gold", 600.0)]);
    let idle = demand(&[(1, "free", 5000.0)]);
    assert!((budgets(1, &res, 1000.0, &idle).best_effort - 1000.0).abs() < 1e-6);
    let half = demand(&[(1, "free", 5000.0), (1, "gold", 300.0)]);
    assert!((budgets(1, &res, 1000.0, &half).best_effort - 700.0).abs() < 1e-6);
}

#[test]
fn reserved_first_then_best_effort_then_refused_with_a_wait() {
    let mut a = AdmissionCore::new(AdmissionConfig {
        depth_s: 1.0,
        demand_half_life_s: 2.0,
    });
    a.set_budgets(
        &Budgets {
            reserved: reservations(&[("gold", 600.0)]),
            reserved_whole: reservations(&[("gold", 600.0)]),
            best_effort: 120.0,
        },
        0,
    );
    // gold: 10 MU deep; best effort: 2 MU deep.
    assert_eq!(a.admit(Some("gold"), 8.0, 0), Decision::Reserved);
    assert_eq!(a.admit(Some("gold"), 8.0, 0), Decision::Reserved);
    assert_eq!(a.admit(Some("gold"), 8.0, 0), Decision::BestEffort);
    assert_eq!(
        a.admit(None, 8.0, 0),
        Decision::Refused { retry_after_s: 3 }
    );
    assert_eq!(
        a.admit(Some("free"), 1.0, 0),
        Decision::Refused { retry_after_s: 3 }
    );
    // Later, the buckets have refilled.
    assert_eq!(a.admit(Some("gold"), 8.0, 2_000_000), Decision::Reserved);
    assert_eq!(a.admit(Some("free"), 1.0, 4_000_000), Decision::BestEffort);
    // The demand it reports counts everything asked, admitted or not.
    let d = a.demand(4_000_000);
    assert!(d["gold"] > 0.0 && d["free"] > 0.0 && d[""] > 0.0);
}

proptest! {
    /// Whatever the demand, the nodes' shares add up to each reservation and to the
    /// spare, and reserved plus best effort never exceeds capacity (or the reservations,
    /// when they alone exceed it).
    #[test]
    fn shares_add_up_to_the_promise(
        cells in proptest::collection::vec((1u64..5, 0usize..3, 0.0f64..5000.0), 0..20),
        gold in 0.0f64..2000.0,
        silver in 0.0f64..2000.0,
        capacity in 0.0f64..6000.0,
    ) {
        let names = ["gold", "silver", "free"];
        let entries: Vec<(u64, &str, f64)> =
            cells.iter().map(|&(n, t, v)| (n, names[t], v)).collect();
        let d = demand(&entries);
        let res = reservations(&[("gold", gold), ("silver", silver)]);
        let mut nodes: Vec<u64> = d.keys().copied().collect();
        if nodes.is_empty() {
            nodes.push(1);
        }
        let all: Vec<Budgets> = nodes.iter().map(|&n| budgets(n, &res, capacity, &d)).collect();
        for (tenant, &r) in &res {
            let sum: f64 = all.iter().map(|b| b.reserved.get(tenant).copied().unwrap_or(0.0)).sum();
            if r > 0.0 {
                prop_assert!((sum - r).abs() < 1e-6 * r.max(1.0), "{} {} {}", tenant, sum, r);
            }
        }
        let spare: f64 = all.iter().map(|b| b.best_effort).sum();
        let reserved: f64 = res.values().sum();
        prop_assert!(spare >= -1e-9);
        prop_assert!(spare <= capacity + 1e-6);
        prop_assert!(spare + reserved <= capacity.max(reserved) + reserved + 1e-6);
        let used: f64 = res
            .iter()
            .map(|(t, r)| r.min(d.values().filter_map(|n| n.get(t)).sum()))
            .sum();
        prop_assert!((spare - (capacity - used).max(0.0)).abs() < 1e-6 * capacity.max(1.0));
    }
}
