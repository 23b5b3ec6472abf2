//! Decision stability through real encryption: a tiny model, re-encrypted with one key.

use hexray_crypto::params::DEFAULT_PARAMETER_SET;
use hexray_model::simulate;
use hexray_model::testing::tiny_model_with;
use hexray_trainer::data::Dataset;
use hexray_trainer::encrypted::stability;
use ndarray::Array3;

#[test]
fn re_encryptions_are_counted_and_only_borderline_images_may_flip() {
    let (model, circuit) = tiny_model_with(DEFAULT_PARAMETER_SET.fhe_parameters());
    // Images of rising brightness; the tiny model calls them differently.
    let images: Vec<Array3<i64>> = (0..6)
        .map(|k| {
            Array3::from_shape_fn((1, 4, 4), |(_, y, x)| {
                ((k * 40 + y * 9 + x * 5) % 256) as i64
            })
        })
        .collect();
    let labels = images
        .iter()
        .map(|i| simulate::exact(&circuit, i.view()).unwrap().class())
        .collect();
    let test = Dataset {
        images,
        labels,
        patients: None,
    };
    let s = stability(&model, &test, 3, 4, false).unwrap();
    assert_eq!((s.runs, s.test_images, s.encrypted_images), (3, 6, 4));
    assert!(s.borderline <= 6 && s.encrypted_borderline == s.borderline.min(4));
    assert!(
        s.simulated_flipping <= s.borderline,
        "a flip in 3 draws is a flip in 200"
    );
    assert!(s.encrypted_flipping <= s.encrypted_images);
    assert_eq!(s.encrypted_flipping_unflagged, 0, "{s:?}");
    // Every result is counted once, and the mark's misses are among flipping images' results.
    assert_eq!(s.simulated_marked.1, 6 * 3);
    assert_eq!(s.encrypted_marked.1, 4 * 3);
    assert_eq!(s.borderline_margin, model.borderline_margin);
    for ((marked, all), (missed, flipping)) in [
        (s.simulated_marked, s.simulated_flipping_unmarked),
        (s.encrypted_marked, s.encrypted_flipping_unmarked),
    ] {
        assert!(
            marked <= all && missed <= flipping && flipping <= all,
            "{s:?}"
        );
    }
    for (mean, max) in [s.simulated_spread, s.encrypted_spread] {
        assert!(
            (0.0..=1.0).contains(&mean) && mean <= max && max <= 1.0,
            "{s:?}"
        );
    }
}
