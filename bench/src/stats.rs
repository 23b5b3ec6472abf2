//! Order statistics over repeated timings: one rule for the medians and percentiles every
//! benchmark prints, so that their figures compare.

use std::time::Duration;

/// The `q`-quantile (0 to 1) of `sorted` values by the nearest rank; 0 when there are none.
pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// The median of `values`, which it sorts.
pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(values, 0.5)
}

/// The median of `times`, in milliseconds.
pub(crate) fn median_ms(times: impl IntoIterator<Item = Duration>) -> f64 {
    let mut ms: Vec<f64> = times.into_iter().map(|t| t.as_secs_f64() * 1e3).collect();
    median(&mut ms)
}
