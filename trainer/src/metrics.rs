//! Classification metrics for the reports: accuracy, F1, ROC AUC and the confusion matrix.
//!
//! Medical test sets are small and often unbalanced (PneumoniaMNIST has about three pneumonia
//! images for each normal one), so accuracy alone says little: F1 shows how well the positive
//! class is found, and the AUC shows how well the probabilities rank images whatever the
//! threshold. Reports are written for every run, including tiny smoke runs and folds where a
//! class happens to be missing, so nothing here panics or returns NaN: an undefined ratio is
//! replaced by the value that means "no information" (0 for F1 and accuracy, 0.5 for the AUC).

use hexray_model::simulate::argmax;
use serde::Serialize;

/// Scores of a classifier on a labelled set.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Scores {
    /// How many images were scored.
    pub count: usize,
    /// Fraction of images whose most probable class is their true class (0 when `count` is 0).
    pub accuracy: f64,
    /// F1 of the positive class 1 when there are two classes; macro-F1 (the mean of every
    /// class's F1) otherwise.
    pub f1: f64,
    /// ROC AUC of class 1's probability when there are two classes; the one-vs-rest macro
    /// average otherwise. 0.5 (chance) for a class that has no positive or no negative image.
    pub auc: f64,
    /// `confusion[true][predicted]`: how many images of each true class got each prediction.
    pub confusion: Vec<Vec<usize>>,
}

impl Scores {
    /// Scores the predictions `probabilities` against the true classes `labels`.
    ///
    /// `probabilities[i]` is image i's class probabilities (one per class, at least two
    /// classes) and `labels[i]` its true class. The predicted class is the most probable one,
    /// the first on ties. Images past the end of the shorter slice are ignored. A label or a
    /// probability row longer than the others widens the matrix rather than panicking.
    pub fn new(probabilities: &[Vec<f64>], labels: &[usize]) -> Self {
        let count = labels.len().min(probabilities.len());
        let (probabilities, labels) = (&probabilities[..count], &labels[..count]);
        let classes = probabilities
            .iter()
            .map(Vec::len)
            .chain(labels.iter().map(|&label| label + 1))
            .fold(2, usize::max);

        let mut confusion = vec![vec![0; classes]; classes];
        for (p, &label) in probabilities.iter().zip(labels) {
            confusion[label][argmax(p)] += 1;
        }
        let correct: usize = (0..classes).map(|c| confusion[c][c]).sum();

        // F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (predicted as c + truly c).
        let f1_of = |c: usize| {
            let true_positives = confusion[c][c] as f64;
            let predicted: usize = confusion.iter().map(|row| row[c]).sum();
            let actual: usize = confusion[c].iter().sum();
            ratio(2.0 * true_positives, (predicted + actual) as f64, 0.0)
        };
        // One class against the rest, ranked by that class's probability.
        let auc_of = |c: usize| {
            let scores: Vec<f64> = probabilities
                .iter()
                .map(|p| p.get(c).copied().unwrap_or(0.0))
                .collect();
            let positive: Vec<bool> = labels.iter().map(|&label| label == c).collect();
            auc(&scores, &positive)
        };
        let (f1, auc) = if classes == 2 {
            (f1_of(1), auc_of(1))
        } else {
            let mean = |f: &dyn Fn(usize) -> f64| (0..classes).map(f).sum::<f64>() / classes as f64;
            (mean(&f1_of), mean(&auc_of))
        };

        Scores {
            count,
            accuracy: ratio(correct as f64, count as f64, 0.0),
            f1,
            auc,
            confusion,
        }
    }
}

/// `numerator / denominator`, or `otherwise` when the denominator is 0 (keeps reports NaN-free).
fn ratio(numerator: f64, denominator: f64, otherwise: f64) -> f64 {
    if denominator == 0.0 {
        otherwise
    } else {
        numerator / denominator
    }
}

/// The ROC AUC of `scores` for the images marked `positive`: the probability that a random
/// positive scores above a random negative, a tie counting ½ (the Mann–Whitney U statistic over
/// the number of pairs). 0.5 when there is no positive or no negative image.
///
/// Computed from ranks in O(n log n) rather than by comparing every pair: sort the scores, give
/// tied scores their average rank, and subtract from the positives' rank sum the part that
/// comes from positives being compared with each other.
fn auc(scores: &[f64], positive: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len().min(positive.len())).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));

    let mut positive_rank_sum = 0.0;
    let mut start = 0;
    while start < order.len() {
        // `order[start..end]` is one run of equal scores, sharing the ranks start+1 ..= end.
        let mut end = start + 1;
        while end < order.len() && scores[order[end]] == scores[order[start]] {
            end += 1;
        }
        let average_rank = (start + 1 + end) as f64 / 2.0;
        let positives_in_run = order[start..end].iter().filter(|&&k| positive[k]).count();
        positive_rank_sum += average_rank * positives_in_run as f64;
        start = end;
    }

    let positives = order.iter().filter(|&&k| positive[k]).count() as f64;
    let negatives = order.len() as f64 - positives;
    let u = positive_rank_sum - positives * (positives + 1.0) / 2.0;
    ratio(u, positives * negatives, 0.5)
}

/// ROC curve points (false positive rate, true positive rate) for `scores` of the positive
/// class, `positive[i]` telling whether image i is truly positive.
///
/// The points go from (0, 0) (threshold above every score: nothing called positive) to (1, 1)
/// (everything called positive), one point per distinct score used as threshold, so tied
/// scores make one diagonal step rather than an arbitrary staircase. With no positive (or no
/// negative) image the true (or false) positive rate stays 0 until the final (1, 1).
pub fn roc_curve(scores: &[f64], positive: &[bool]) -> Vec<(f64, f64)> {
    let mut order: Vec<usize> = (0..scores.len().min(positive.len())).collect();
    // Highest score first: lowering the threshold admits images in this order.
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let positives = order.iter().filter(|&&k| positive[k]).count() as f64;
    let negatives = order.len() as f64 - positives;

    let mut points = vec![(0.0, 0.0)];
    let (mut true_positives, mut false_positives) = (0.0, 0.0);
    for (i, &k) in order.iter().enumerate() {
        if positive[k] {
            true_positives += 1.0;
        } else {
            false_positives += 1.0;
        }
        let last_of_its_score = order
            .get(i + 1)
            .is_none_or(|&next| scores[next] != scores[k]);
        if last_of_its_score {
            points.push((
                ratio(false_positives, negatives, 0.0),
                ratio(true_positives, positives, 0.0),
            ));
        }
    }
    if points.last() != Some(&(1.0, 1.0)) {
        points.push((1.0, 1.0));
    }
    points
}

/// Mean and standard deviation of `values`, the squared deviations divided by `n − ddof` (at
/// least 1): `ddof` 0 for a whole population (noise draws, z-scores), 1 for a sample (seeds).
pub fn mean_sd(values: &[f64], ddof: usize) -> (f64, f64) {
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n.max(1) as f64;
    let squares: f64 = values.iter().map(|v| (v - mean).powi(2)).sum();
    (
        mean,
        (squares / n.saturating_sub(ddof).max(1) as f64).sqrt(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two-class probability rows from class 1's probabilities.
    fn two_class(p1: &[f64]) -> Vec<Vec<f64>> {
        p1.iter().map(|&p| vec![1.0 - p, p]).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn confusion_accuracy_and_f1_by_hand() {
        // Truth 1,1,1,0,0; predicted 1,1,0,1,0: TP 2, FN 1, FP 1, TN 1.
        let s = Scores::new(&two_class(&[0.9, 0.8, 0.3, 0.6, 0.1]), &[1, 1, 1, 0, 0]);
        assert_eq!(s.confusion, vec![vec![1, 1], vec![1, 2]]);
        assert_eq!(s.count, 5);
        assert!(close(s.accuracy, 3.0 / 5.0));
        // Precision 2/3, recall 2/3: F1 = 2 * 2 / (2 * 2 + 1 + 1).
        assert!(close(s.f1, 4.0 / 6.0));
        // Positives 0.9, 0.8, 0.3 against negatives 0.6, 0.1: 5 of the 6 pairs are ordered.
        assert!(close(s.auc, 5.0 / 6.0));
    }

    #[test]
    fn the_first_maximum_is_the_prediction() {
        let s = Scores::new(&[vec![0.5, 0.5]], &[0]);
        assert_eq!(s.confusion, vec![vec![1, 0], vec![0, 0]]);
        assert_eq!(argmax(&[f64::NAN, 0.2, 0.7, 0.7]), 2);
    }

    #[test]
    fn auc_is_one_when_perfectly_separated() {
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]), 1.0);
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]), 0.0);
    }

    #[test]
    fn auc_is_one_half_when_all_tied() {
        assert_eq!(auc(&[0.5; 4], &[false, true, false, true]), 0.5);
    }

    #[test]
    fn auc_counts_ties_as_one_half() {
        // Pairs (positive, negative): (0.5, 0.3) ordered = 1, (0.5, 0.5) tied = ½; 1.5 / 2.
        assert!(close(auc(&[0.3, 0.5, 0.5], &[false, false, true]), 0.75));
        // Positives 0.4, 0.4, 0.8 against negatives 0.2, 0.4: 2 + 2 ordered, 2 ties: 5 / 6.
        let scores = [0.4, 0.2, 0.4, 0.8, 0.4];
        let positive = [true, false, true, true, false];
        assert!(close(auc(&scores, &positive), 5.0 / 6.0));
    }

    #[test]
    fn absent_classes_and_empty_input_give_no_nan() {
        assert_eq!(auc(&[0.3, 0.5], &[true, true]), 0.5);
        let empty = Scores::new(&[], &[]);
        assert_eq!(
            (empty.count, empty.accuracy, empty.f1, empty.auc),
            (0, 0.0, 0.0, 0.5)
        );
        assert_eq!(empty.confusion, vec![vec![0, 0], vec![0, 0]]);
        // Only negatives, all predicted negative: F1 is 0/0 → 0, AUC 0.5.
        let negatives = Scores::new(&two_class(&[0.1, 0.2]), &[0, 0]);
        assert_eq!(
            (negatives.accuracy, negatives.f1, negatives.auc),
            (1.0, 0.0, 0.5)
        );
    }

    #[test]
    fn more_than_two_classes_use_macro_averages() {
        let probabilities = vec![
            vec![0.7, 0.2, 0.1],
            vec![0.2, 0.7, 0.1],
            vec![0.1, 0.6, 0.3],
            vec![0.1, 0.2, 0.7],
        ];
        let s = Scores::new(&probabilities, &[0, 1, 2, 2]);
        assert_eq!(
            s.confusion,
            vec![vec![1, 0, 0], vec![0, 1, 0], vec![0, 1, 1]]
        );
        // Per-class F1: 1, 2/3, 2/3.
        assert!(close(s.f1, (1.0 + 2.0 / 3.0 + 2.0 / 3.0) / 3.0));
        // Each class's own probability ranks its images first: every one-vs-rest AUC is 1.
        assert!(close(s.auc, 1.0));
    }

    #[test]
    fn roc_runs_from_origin_to_one_with_a_point_per_threshold() {
        let roc = roc_curve(&[0.9, 0.7, 0.7, 0.2], &[true, false, true, false]);
        assert_eq!(roc, vec![(0.0, 0.0), (0.0, 0.5), (0.5, 1.0), (1.0, 1.0)]);
        assert_eq!(roc_curve(&[], &[]), vec![(0.0, 0.0), (1.0, 1.0)]);
        let one_class = roc_curve(&[0.3, 0.6], &[true, true]);
        assert_eq!(one_class.first(), Some(&(0.0, 0.0)));
        assert_eq!(one_class.last(), Some(&(1.0, 1.0)));
    }
}
