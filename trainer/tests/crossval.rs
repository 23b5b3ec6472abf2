//! Patient-level cross-validation: no held-out patient is ever trained on, every image is held
//! out once per seed, and the calls are counted as sensitivity and specificity.

use std::collections::BTreeSet;

use hexray_trainer::crossval::{cross_validate, wilson};
use hexray_trainer::data::{DataError, Dataset};
use ndarray::Array3;

/// `n` images of `patients` patients (several images each), labels alternating by patient.
fn dataset(n: usize, patients: usize) -> Dataset {
    Dataset {
        images: vec![Array3::zeros((1, 2, 2)); n],
        labels: (0..n).map(|i| (i % patients) % 2).collect(),
        patients: Some((0..n).map(|i| format!("P{}", i % patients)).collect()),
    }
}

#[test]
fn the_folds_share_no_patient_and_hold_out_every_image_once_per_seed() {
    let data = dataset(44, 39);
    let patients = data.patients.clone().unwrap();
    let mut held_per_seed: Vec<(u64, Vec<usize>)> = Vec::new();
    let models = cross_validate(&data, 4, &[7, 8, 9], |seed, fit_on, held_out| {
        let trained: BTreeSet<&String> = fit_on.iter().map(|&i| &patients[i]).collect();
        for &i in held_out {
            assert!(
                !trained.contains(&patients[i]),
                "patient {} on both sides",
                patients[i]
            );
        }
        assert_eq!(fit_on.len() + held_out.len(), 44);
        match held_per_seed.last_mut() {
            Some((s, held)) if *s == seed => held.extend(held_out),
            _ => held_per_seed.push((seed, held_out.to_vec())),
        }
        // A model that calls everything abnormal, twice per image.
        let calls = held_out.iter().map(|_| vec![vec![0.2, 0.8]; 2]).collect();
        Ok::<_, DataError>(vec![("always abnormal".to_owned(), calls)])
    })
    .unwrap();
    assert_eq!(held_per_seed.len(), 3);
    for (_, mut held) in held_per_seed {
        held.sort();
        assert_eq!(held, (0..44).collect::<Vec<_>>());
    }
    let [model] = &models[..] else {
        panic!("one model")
    };
    assert_eq!((model.images, model.patients, model.folds), (44, 39, 4));
    assert_eq!(model.seeds.len(), 3);
    assert_eq!(model.sensitivity(), (1.0, 0.0));
    assert_eq!(model.specificity(), (0.0, 0.0));
    let abnormal = data.labels.iter().filter(|&&l| l == 1).count();
    assert_eq!(
        model.seeds[0].abnormal_flagged,
        (2 * abnormal, 2 * abnormal)
    );
    assert_eq!(model.sensitivity_interval(), wilson(1.0, abnormal));
    assert!(
        model.sensitivity_interval().0 < 0.9,
        "a small set makes a wide interval"
    );
}

#[test]
fn too_few_patients_for_the_folds_is_an_error_not_a_leak() {
    let data = dataset(6, 3);
    let result = cross_validate(&data, 4, &[1], |_, _, _| Ok::<_, DataError>(Vec::new()));
    assert!(matches!(result, Err(DataError::Split(_))));
}

#[test]
fn wilson_intervals_widen_as_the_set_shrinks() {
    let (low_small, high_small) = wilson(0.9, 20);
    let (low_large, high_large) = wilson(0.9, 2000);
    assert!(low_small < low_large && high_small > high_large);
    assert!(low_small > 0.0 && high_small < 1.0);
    assert_eq!(wilson(0.5, 0), (0.0, 1.0));
}
