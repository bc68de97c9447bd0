//! What the placement search pays for a replica's load outside its band, and the amount
//! of load whose move from one replica to another lowers that the most.
//!
//! The search asks for that amount at every step on a replica serving thousands of
//! slices (`Work::likely`), for six receivers each time. The sum it minimizes is convex
//! and quadratic between a few known loads (the band's edges on either side), so its
//! minimum is found in closed form rather than by a numeric search.

/// Penalty weights, after Dicer's `PlacementPhase.scala`: a replica above the band costs
/// 16 per unit of excess load, one below it 4 per unit of shortfall (both growing with
/// the distance).
const OVERSHOOT: f64 = 16.0;
const UNDERSHOOT: f64 = 4.0;

/// The band of relative load (load / fair load) that costs nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Band {
    pub lo: f64,
    pub hi: f64,
}

/// One side of a move: a replica's load and its fair load, in MU/min.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Side {
    pub load: f64,
    pub fair: f64,
}

impl Band {
    /// Penalty of a replica whose fair load is `fair` carrying `load` (in MU/min, like
    /// the churn it is traded against): zero inside the band, growing outside it.
    pub fn penalty(&self, fair: f64, load: f64) -> f64 {
        let x = load / fair;
        if x > self.hi {
            let e = x - self.hi;
            fair * OVERSHOOT * e * (1.0 + e)
        } else if x < self.lo {
            let e = self.lo - x;
            fair * UNDERSHOOT * e * (1.0 + e)
        } else {
            0.0
        }
    }

    /// The penalty's slope in load on the part of the load axis that holds `load`, as
    /// `(a, b)` with slope `a + b × load` there.
    fn slope_line(&self, fair: f64, load: f64) -> (f64, f64) {
        let x = load / fair;
        if x > self.hi {
            // d/dl of fair·O·e(1 + e), e = l/fair − hi.
            (OVERSHOOT * (1.0 - 2.0 * self.hi), 2.0 * OVERSHOOT / fair)
        } else if x < self.lo {
            // d/dl of fair·U·e(1 + e), e = lo − l/fair.
            (-UNDERSHOOT * (1.0 + 2.0 * self.lo), 2.0 * UNDERSHOOT / fair)
        } else {
            (0.0, 0.0)
        }
    }

    /// The penalty's slope in load at `load`. It grows with the relative load
    /// `load / fair` alone, and, the penalty being convex, a replica taking `x` more
    /// pays at least `x` times it: a floor on what any colder replica can gain.
    pub fn slope(&self, fair: f64, load: f64) -> f64 {
        let (a, b) = self.slope_line(fair, load);
        a + b * load
    }

    /// The amount `x` in `[lo, hi]` that minimizes `penalty(from, from.load − x) +
    /// penalty(to, to.load + x) + churn × x`. The sum's slope in `x` is affine between
    /// the four amounts that bring a side to an edge of its band, and never falls, so
    /// the minimum is where it turns non-negative: at a root inside a piece, or at a
    /// piece's start where it jumps past zero.
    pub fn best_move(&self, from: Side, to: Side, churn: f64, lo: f64, hi: f64) -> f64 {
        // An empty interval (or one with no order) has only its start to offer.
        if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
            return lo;
        }
        let mut edges = [
            from.load - self.hi * from.fair,
            from.load - self.lo * from.fair,
            self.hi * to.fair - to.load,
            self.lo * to.fair - to.load,
        ];
        edges.sort_by(f64::total_cmp);
        let ends = edges
            .into_iter()
            .filter(|&e| e > lo && e < hi)
            .chain(std::iter::once(hi));
        let mut start = lo;
        for end in ends {
            if end <= start {
                continue;
            }
            let mid = (start + end) / 2.0;
            let (af, bf) = self.slope_line(from.fair, from.load - mid);
            let (at, bt) = self.slope_line(to.fair, to.load + mid);
            // Slope of the sum at x in this piece: a + b·x.
            let a = -(af + bf * from.load) + at + bt * to.load + churn;
            let b = bf + bt;
            if a + b * start >= 0.0 {
                return start;
            }
            if a + b * end > 0.0 {
                return (-a / b).clamp(start, end);
            }
            start = end;
        }
        hi
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A golden-section search for the minimum of a convex function on `[lo, hi]`
    /// (what the placement search used before the closed form): the reference.
    fn golden(lo: f64, hi: f64, f: impl Fn(f64) -> f64) -> f64 {
        const INV_PHI: f64 = 0.618_033_988_749_895;
        let (mut a, mut b) = (lo, hi);
        let mut c = b - INV_PHI * (b - a);
        let mut d = a + INV_PHI * (b - a);
        let (mut fc, mut fd) = (f(c), f(d));
        for _ in 0..64 {
            if fc <= fd {
                (b, d, fd) = (d, c, fc);
                c = b - INV_PHI * (b - a);
                fc = f(c);
            } else {
                (a, c, fc) = (c, d, fd);
                d = a + INV_PHI * (b - a);
                fd = f(d);
            }
        }
        (a + b) / 2.0
    }

    const BAND: Band = Band { lo: 0.8, hi: 1.2 };

    fn cost(from: Side, to: Side, churn: f64) -> impl Fn(f64) -> f64 {
        move |x| {
            BAND.penalty(from.fair, from.load - x) + BAND.penalty(to.fair, to.load + x) + churn * x
        }
    }

    proptest! {
        /// What [`Band::slope`] promises the placement search's pruning: taking `x` more
        /// costs at least `x` times the slope, and a replica at a higher relative load
        /// has at least the slope of one at a lower.
        #[test]
        fn a_replica_pays_at_least_its_slope_and_colder_ones_have_less(
            fair in 1.0f64..1e6,
            other in 1.0f64..1e6,
            rel in 0.0f64..200.0,
            step in 0.0f64..50.0,
            x in 0.0f64..1e6,
        ) {
            let load = rel * fair;
            let s = BAND.slope(fair, load);
            let rise = BAND.penalty(fair, load + x) - BAND.penalty(fair, load);
            prop_assert!(rise >= s * x - 1e-9 * (rise.abs() + (s * x).abs() + 1.0));
            let hotter = BAND.slope(other, (rel + step) * other);
            prop_assert!(hotter >= s - 1e-9 * (s.abs() + 1.0), "{hotter} < {s}");
        }
    }

    #[test]
    fn a_hot_replica_sheds_to_the_top_of_its_band_when_the_receiver_has_room() {
        // From 200 on a fair 100 (band top 120) to an idle replica of fair 100: moving
        // 80 brings the giver to its band's top; the receiver, at 80, is in its band.
        // Past that, the giver's penalty stops falling and churn costs more.
        let from = Side {
            load: 200.0,
            fair: 100.0,
        };
        let to = Side {
            load: 0.0,
            fair: 100.0,
        };
        let x = BAND.best_move(from, to, 0.25, 0.0, 150.0);
        assert!((x - 80.0).abs() < 1e-9, "{x}");
        // With nothing to gain, nothing moves.
        let calm = Side {
            load: 100.0,
            fair: 100.0,
        };
        assert_eq!(BAND.best_move(calm, calm, 0.25, 0.0, 50.0), 0.0);
        // The largest amount allowed when even it leaves the giver far over its band.
        let x = BAND.best_move(
            Side {
                load: 1e4,
                fair: 100.0,
            },
            to,
            0.25,
            0.0,
            50.0,
        );
        assert_eq!(x, 50.0);
    }

    proptest! {
        /// The closed form finds what a golden-section search over the same sum finds:
        /// its cost is no higher, and the two amounts agree (the minimum is unique: the
        /// sum's slope only stands still, at `churn`, where both sides are in band).
        #[test]
        fn the_closed_form_finds_the_searched_minimum(
            from_fair in 1.0f64..1e5,
            to_fair in 1.0f64..1e5,
            from_rel in 0.0f64..4.0,
            to_rel in 0.0f64..4.0,
            churn in 0.05f64..1.0,
            lo_frac in 0.0f64..1.0,
            width_frac in 0.0f64..1.0,
        ) {
            let from = Side { load: from_rel * from_fair, fair: from_fair };
            let to = Side { load: to_rel * to_fair, fair: to_fair };
            let lo = lo_frac * from.load;
            let hi = lo + width_frac * (from.load - lo);
            let f = cost(from, to, churn);
            let x = BAND.best_move(from, to, churn, lo, hi);
            let g = golden(lo, hi, &f);
            prop_assert!((lo..=hi).contains(&x), "{x} outside [{lo}, {hi}]");
            let scale = 1e-9 * (1.0 + f(g).abs() + from.fair + to.fair);
            prop_assert!(f(x) <= f(g) + scale, "f({x}) = {} > f({g}) = {}", f(x), f(g));
            prop_assert!((x - g).abs() <= 1e-6 * (1.0 + hi - lo), "{x} against {g}");
        }
    }
}
