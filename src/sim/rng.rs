//! A small seedable PRNG (splitmix64) and the few distributions the simulator draws from.
//!
//! Self-contained rather than a crate: the simulator needs a handful of draws, and its figures
//! must not move when a dependency changes its algorithm (`--seed 1` is quoted in
//! docs/BENCHMARKS.md).

/// splitmix64 (Steele, Lea, Flood 2014): one 64-bit state, full period, good enough for
/// simulation, not for secrets.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// An independent stream per purpose (`stream`), so adding draws to one part of the
    /// simulation (say, boot times) leaves the others (the baseline's boots) unchanged.
    pub fn new(seed: u64, stream: u64) -> Rng {
        let mut rng = Rng(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        rng.next_u64();
        rng
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Exponential with the given mean (Poisson inter-arrival times).
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }

    /// Standard normal (Box–Muller; the second value is dropped for simplicity).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit(); // (0, 1]: ln is finite
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// VM boot times (create → Ready): lognormal with the given mean and standard deviation,
/// clamped. Lognormal because boots have a long right tail (a slow image pull, a busy zone)
/// and never go below some floor.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct BootTimes {
    pub mean_s: f64,
    pub sd_s: f64,
    pub min_s: f64,
    pub max_s: f64,
}

impl BootTimes {
    /// One boot time in seconds.
    ///
    /// For mean m and sd s the underlying normal has σ² = ln(1 + s²/m²), μ = ln m − σ²/2:
    /// mean 45, sd 8 gives σ ≈ 0.176, a median of ≈ 44.3 s and a p90 of ≈ 55.5 s.
    pub fn draw(&self, rng: &mut Rng) -> f64 {
        if self.sd_s <= 0.0 {
            return self.mean_s.clamp(self.min_s, self.max_s);
        }
        let var = (1.0 + (self.sd_s / self.mean_s).powi(2)).ln();
        let mu = self.mean_s.ln() - var / 2.0;
        (mu + var.sqrt() * rng.normal())
            .exp()
            .clamp(self.min_s, self.max_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_draws_and_streams_differ() {
        let a: Vec<u64> = (0..5).map(|_| Rng::new(7, 1).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut one = Rng::new(7, 1);
        let mut two = Rng::new(7, 2);
        assert_ne!(one.next_u64(), two.next_u64());
    }

    #[test]
    fn boot_times_have_the_asked_mean_and_spread_within_the_clamp() {
        let boots = BootTimes {
            mean_s: 45.0,
            sd_s: 8.0,
            min_s: 25.0,
            max_s: 120.0,
        };
        let mut rng = Rng::new(1, 0);
        let draws: Vec<f64> = (0..20_000).map(|_| boots.draw(&mut rng)).collect();
        let n = draws.len() as f64;
        let mean = draws.iter().sum::<f64>() / n;
        let sd = (draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!((mean - 45.0).abs() < 0.3, "mean {mean}");
        assert!((sd - 8.0).abs() < 0.3, "sd {sd}");
        assert!(draws.iter().all(|x| (25.0..=120.0).contains(x)));
    }

    #[test]
    fn unit_draws_stay_in_range() {
        let mut rng = Rng::new(3, 0);
        for _ in 0..10_000 {
            let u = rng.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
