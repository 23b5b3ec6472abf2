//! The topology grammar: `c<channels>k<kernel>s<stride>p<padding>[x<pool>]` and `d<outputs>`,
//! comma-separated, each with an optional trailing `l` (linear: no activation).

use hexray_model::network::Shape;
use hexray_trainer::topology::{Block, Conv, Topology, PRESETS};

const INPUT: Shape = Shape::Image { c: 1, h: 28, w: 28 };

fn reason(spec: &str) -> String {
    Topology::parse(spec)
        .err()
        .unwrap_or_else(|| panic!("{spec:?} should not parse"))
        .reason
}

#[test]
fn every_preset_parses_fits_and_prints_back_its_spec() {
    for (name, spec) in PRESETS {
        let topology = Topology::parse(name).unwrap();
        assert_eq!(topology.spec(), *spec, "{name}");
        assert_eq!(Topology::parse(spec).unwrap().blocks, topology.blocks);
        topology.check(INPUT).unwrap();
    }
}

#[test]
fn blocks_read_every_field_and_the_linear_suffix() {
    let topology = Topology::parse("c4k3s2p0,c8k5s1p2x2l,d64l,d16").unwrap();
    assert_eq!(
        topology.blocks,
        [
            Block::Conv {
                conv: Conv {
                    channels: 4,
                    kernel: 3,
                    stride: 2,
                    padding: 0,
                    pool: 1,
                },
                linear: false
            },
            Block::Conv {
                conv: Conv {
                    channels: 8,
                    kernel: 5,
                    stride: 1,
                    padding: 2,
                    pool: 2,
                },
                linear: true
            },
            Block::Dense {
                outputs: 64,
                linear: true
            },
            Block::Dense {
                outputs: 16,
                linear: false
            },
        ]
    );
}

#[test]
fn shapes_and_bootstraps_follow_the_contracts_shape_rule() {
    // 28 → (28 + 4 − 5)/1 + 1 = 28 → pooled 2×2: 14; then (14 − 3)/2 + 1 = 6.
    let topology = Topology::parse("c8k5s1p2x2,c4k3s2p0,d16").unwrap();
    assert_eq!(
        topology.shapes(INPUT),
        [
            Shape::Image { c: 8, h: 14, w: 14 },
            Shape::Image { c: 4, h: 6, w: 6 },
            Shape::Flat(16),
        ]
    );
    assert_eq!(topology.bootstraps(INPUT), 8 * 14 * 14 + 4 * 6 * 6 + 16);
    // Linear blocks cost nothing.
    assert_eq!(Topology::parse("front-64").unwrap().bootstraps(INPUT), 64);
}

#[test]
fn malformed_specs_say_what_is_wrong() {
    assert!(reason("c8k3s1").contains("lacks 'p'"));
    assert!(reason("c0k3s1p1,d8").contains("positive number after 'c'"));
    assert!(reason("d0").contains("positive number after 'd'"));
    assert!(reason("d64z").contains("trailing \"z\""));
    assert!(reason("dx").contains("positive number"));
    assert!(reason("").contains("lacks"));
    assert!(reason("d16,c4k3s1p1,d8").contains("cannot follow a dense layer"));
    assert!(reason("c8k3s1p1l,c4k3s1p1,d16").contains("linear front must end in a dense"));
    assert!(reason("d64,d16l").contains("needs an activation"));
    // Zero padding is allowed; a zero pool is not.
    assert!(Topology::parse("c4k3s1p0,d8").is_ok());
    assert!(reason("c4k3s1p0x0,d8").contains("positive number after 'x'"));
}

#[test]
fn a_block_too_large_for_its_input_is_refused_by_check() {
    let topology = Topology::parse("c4k29s1p0,d8").unwrap();
    let err = topology.check(INPUT).unwrap_err();
    assert!(err.reason.contains("29×29 window"), "{}", err.reason);
    let pooled = Topology::parse("c4k7s3p0x9,d8").unwrap();
    assert!(
        pooled.check(INPUT).is_err(),
        "an 8×8 map cannot be pooled 9×9"
    );
}
