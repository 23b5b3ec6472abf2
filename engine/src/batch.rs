//! Keyswitch + programmable bootstrap of a batch of ciphertexts, each through its own table.
//!
//! The bootstrap is limited by memory traffic: every one streams the whole Fourier
//! bootstrapping key (918 GGSW ciphertexts, about 60 MB), and two cores doing so at once slow
//! each other down. TFHE-rs's core `batch_blind_rotate_assign` walks the key once per batch,
//! applying each GGSW to every ciphertext of the batch while it is in cache.
//!
//! Every step is the one `ServerKey::apply_lookup_table_assign` takes: the same keyswitch, the
//! modulus switch of the key's own configuration (TFHE-rs's centred switch for HEXray's
//! parameter sets; core's `batch_programmable_bootstrap` would skip it), the blind rotation,
//! and the sample extraction. Results are bit for bit the same; a test checks it.

use hexray_crypto::tfhe::core_crypto::commons::computation_buffers::ComputationBuffers;
use hexray_crypto::tfhe::core_crypto::fft_impl::fft64::crypto::bootstrap::batch_blind_rotate_assign_scratch;
use hexray_crypto::tfhe::core_crypto::fft_impl::fft64::math::fft::Fft;
use hexray_crypto::tfhe::core_crypto::prelude::*;
use hexray_crypto::tfhe::shortint::atomic_pattern::AtomicPatternServerKey;
use hexray_crypto::tfhe::shortint::server_key::{LookupTableOwned, ShortintBootstrappingKey};
use hexray_crypto::tfhe::shortint::PBSOrder;
use hexray_crypto::ServerKey;

/// Bootstraps `phases[i]` through `tables[i]`, returning one big-key LWE ciphertext each.
pub fn bootstrap_batch(
    key: &ServerKey,
    phases: &[LweCiphertextOwned<u64>],
    tables: &[LookupTableOwned],
) -> Vec<LweCiphertextOwned<u64>> {
    assert_eq!(phases.len(), tables.len(), "one table per ciphertext");
    match &key.tfhe().atomic_pattern {
        AtomicPatternServerKey::Standard(ap) => {
            assert_eq!(
                ap.pbs_order,
                PBSOrder::KeyswitchBootstrap,
                "HEXray's sets keyswitch first"
            );
            let ksk = &ap.key_switching_key;
            let keyswitched = phases.iter().map(|ct| {
                let mut out =
                    LweCiphertext::new(0u64, ksk.output_lwe_size(), ksk.ciphertext_modulus());
                keyswitch_lwe_ciphertext(ksk, ct, &mut out);
                out
            });
            blind_rotate(&ap.bootstrapping_key, keyswitched.collect(), tables)
        }
        AtomicPatternServerKey::KeySwitch32(ap) => {
            let ksk = &ap.key_switching_key;
            let keyswitched = phases.iter().map(|ct| {
                let mut out =
                    LweCiphertext::new(0u32, ksk.output_lwe_size(), ksk.ciphertext_modulus());
                keyswitch_lwe_ciphertext_with_scalar_change(ksk, ct, &mut out);
                out
            });
            blind_rotate(&ap.bootstrapping_key, keyswitched.collect(), tables)
        }
        AtomicPatternServerKey::Dynamic(_) => {
            unreachable!("HEXray's parameter sets use the standard and KS32 atomic patterns")
        }
    }
}

/// Modulus switch, batched blind rotation and sample extraction.
fn blind_rotate<Scalar>(
    bootstrapping_key: &ShortintBootstrappingKey<Scalar>,
    keyswitched: Vec<LweCiphertextOwned<Scalar>>,
    tables: &[LookupTableOwned],
) -> Vec<LweCiphertextOwned<u64>>
where
    Scalar: UnsignedTorus + CastInto<usize>,
{
    let ShortintBootstrappingKey::Classic {
        bsk,
        modulus_switch_noise_reduction_key,
    } = bootstrapping_key
    else {
        unreachable!("HEXray's parameter sets use the classic (not multi-bit) bootstrap")
    };
    let polynomial_size = bsk.polynomial_size();
    let glwe_size = bsk.glwe_size();
    let log_modulus = polynomial_size.to_blind_rotation_input_modulus_log();
    let switched: Vec<_> = keyswitched
        .iter()
        .map(|ct| {
            modulus_switch_noise_reduction_key
                .lwe_ciphertext_modulus_switch::<usize, _>(ct, log_modulus)
        })
        .collect();

    let modulus = CiphertextModulus::new_native();
    let mut accumulators = GlweCiphertextList::new(
        0u64,
        glwe_size,
        polynomial_size,
        GlweCiphertextCount(tables.len()),
        modulus,
    );
    for (mut accumulator, table) in accumulators.iter_mut().zip(tables) {
        accumulator.as_mut().copy_from_slice(table.acc.as_ref());
    }
    let fft = Fft::new(polynomial_size);
    let fft = fft.as_view();
    let mut buffers = ComputationBuffers::new();
    let scratch = batch_blind_rotate_assign_scratch::<u64>(
        glwe_size,
        polynomial_size,
        CiphertextCount(tables.len()),
        fft,
    );
    buffers.resize(scratch.unaligned_bytes_required());
    bsk.as_view().batch_blind_rotate_assign(
        accumulators.as_mut_view(),
        &switched,
        fft,
        buffers.stack(),
    );

    let output_size = glwe_size
        .to_glwe_dimension()
        .to_equivalent_lwe_dimension(polynomial_size)
        .to_lwe_size();
    accumulators
        .iter()
        .map(|accumulator| {
            let mut out = LweCiphertext::new(0u64, output_size, modulus);
            extract_lwe_sample_from_glwe_ciphertext(&accumulator, &mut out, MonomialDegree(0));
            out
        })
        .collect()
}
