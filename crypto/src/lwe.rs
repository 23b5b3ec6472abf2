//! What the server computes on ciphertexts: big-key LWE ciphertexts, dot products with clear
//! integer weights, lookup tables, and keyswitch + programmable bootstrap, one at a time or in
//! batches. The engine composes these into a network; this module is the only place the
//! server's side names TFHE-rs's internals, so the atomic-pattern dispatch is written once.
//!
//! The batched bootstrap is limited by memory traffic: every bootstrap streams the whole
//! Fourier bootstrapping key (918 GGSW ciphertexts, about 60 MB), and two cores doing so at
//! once slow each other down. TFHE-rs's core `batch_blind_rotate_assign` walks the key once per
//! batch, applying each GGSW to every ciphertext of the batch while it is in cache. Every step
//! is the one `ServerKey::apply_lookup_table_assign` takes ([`ServerKey::bootstrap`]): the same
//! keyswitch, the modulus switch of the key's own configuration (TFHE-rs's centred switch for
//! HEXray's parameter sets; core's `batch_programmable_bootstrap` would skip it), the blind
//! rotation and the sample extraction, so results are bit for bit the same.

use tfhe::core_crypto::algorithms::slice_algorithms::slice_wrapping_add_scalar_mul_assign;
use tfhe::core_crypto::commons::computation_buffers::ComputationBuffers;
use tfhe::core_crypto::fft_impl::fft64::crypto::bootstrap::batch_blind_rotate_assign_scratch;
use tfhe::core_crypto::fft_impl::fft64::math::fft::Fft;
use tfhe::core_crypto::prelude::*;
use tfhe::shortint::atomic_pattern::AtomicPatternServerKey;
use tfhe::shortint::ciphertext::{Degree, NoiseLevel};
use tfhe::shortint::server_key::{LookupTableOwned, ShortintBootstrappingKey};
use tfhe::shortint::PBSOrder;

use crate::keys::ServerKey;

/// One LWE ciphertext under the big key: a neuron's phase before its bootstrap, or its output
/// after it.
#[derive(Clone, Debug, PartialEq)]
pub struct Ciphertext(LweCiphertextOwned<u64>);

/// LWE ciphertexts under the big key, one per value: an expanded encrypted image
/// ([`EncryptedImage::expand`](crate::EncryptedImage::expand)), or one stage's outputs for one
/// image.
#[derive(Clone, Debug, PartialEq)]
pub struct Ciphertexts(LweCiphertextListOwned<u64>);

/// A bootstrap's table: the test polynomial whose box `p` holds the torus value the table
/// gives position `p` ([`ServerKey::lookup_table`]).
pub struct LookupTable(LookupTableOwned);

impl Ciphertexts {
    pub(crate) fn from_tfhe(list: LweCiphertextListOwned<u64>) -> Self {
        Ciphertexts(list)
    }

    pub(crate) fn tfhe(&self) -> &LweCiphertextListOwned<u64> {
        &self.0
    }

    /// Joins ciphertexts into one list, in order.
    ///
    /// # Panics
    /// On an empty list, which has no ciphertext size: every stage has a neuron.
    pub fn concat(ciphertexts: Vec<Ciphertext>) -> Self {
        let first = ciphertexts.first().expect("at least one ciphertext");
        let (size, modulus) = (first.0.lwe_size(), first.0.ciphertext_modulus());
        let values: Vec<u64> = ciphertexts
            .into_iter()
            .flat_map(|ct| ct.0.into_container())
            .collect();
        Ciphertexts(LweCiphertextList::from_container(values, size, modulus))
    }

    /// Number of ciphertexts.
    pub fn len(&self) -> usize {
        self.0.lwe_ciphertext_count().0
    }

    /// Whether the list holds no ciphertext.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `constant + Σ w·ciphertexts[i]` over `terms` of `(i, w)`, in wrapping 64-bit arithmetic:
    /// clear integer weights cost no bootstrap, and add noise only by the weights' 2-norm.
    ///
    /// ```
    /// # use hexray_crypto::{ClientKey, ParameterSet};
    /// # let set = ParameterSet::Ks32;
    /// # let (model, circuit) = hexray_model::testing::tiny_model_with(set.fhe_parameters());
    /// # let spec = hexray_model::ClientSpec::of(&model, &circuit);
    /// let (client, server) = ClientKey::generate_deterministic(set, 1);
    /// let server = server.decompress();
    /// // 16 pixels 0, 1, 2, …, each encrypted as q·2^32 under the big key.
    /// let pixels = ndarray::Array3::from_shape_fn((1, 4, 4), |(_, y, x)| (4 * y + x) as i64);
    /// let encrypted = client.encrypt(&spec, pixels.view()).unwrap().expand();
    /// // 3·pixel 2 + 5·pixel 7 + 1, in the pixels' unit.
    /// let sum = encrypted.dot_product([(2, 3), (7, 5)], 1 << 32);
    /// let phase = client.decrypt_phases(&hexray_crypto::lwe::Ciphertexts::concat(vec![sum]))[0];
    /// assert_eq!((phase as f64 / 2f64.powi(32)).round(), (3 * 2 + 5 * 7 + 1) as f64);
    /// ```
    pub fn dot_product(
        &self,
        terms: impl IntoIterator<Item = (usize, u64)>,
        constant: u64,
    ) -> Ciphertext {
        let mut acc = LweCiphertext::new(0u64, self.0.lwe_size(), self.0.ciphertext_modulus());
        for (i, weight) in terms {
            slice_wrapping_add_scalar_mul_assign(acc.as_mut(), self.0.get(i).as_ref(), weight);
        }
        lwe_ciphertext_plaintext_add_assign(&mut acc, Plaintext(constant));
        Ciphertext(acc)
    }
}

/// The small-key ciphertexts a keyswitch gives, in the scalar the key's atomic pattern
/// keyswitches to, with the bootstrapping key that reads them.
pub(crate) enum Keyswitched<'k> {
    /// The standard atomic pattern: 64-bit small-key ciphertexts.
    U64(
        Vec<LweCiphertextOwned<u64>>,
        &'k ShortintBootstrappingKey<u64>,
    ),
    /// KS32: 32-bit small-key ciphertexts.
    U32(
        Vec<LweCiphertextOwned<u32>>,
        &'k ShortintBootstrappingKey<u32>,
    ),
}

impl ServerKey {
    /// Keyswitches big-key ciphertexts to the small key, as before a bootstrap.
    pub(crate) fn keyswitch<'a>(
        &self,
        ciphertexts: impl Iterator<Item = LweCiphertextView<'a, u64>>,
    ) -> Keyswitched<'_> {
        match &self.tfhe().atomic_pattern {
            AtomicPatternServerKey::Standard(ap) => {
                assert_eq!(
                    ap.pbs_order,
                    PBSOrder::KeyswitchBootstrap,
                    "HEXray's sets keyswitch first"
                );
                let ksk = &ap.key_switching_key;
                let small = ciphertexts.map(|ct| {
                    let mut out =
                        LweCiphertext::new(0u64, ksk.output_lwe_size(), ksk.ciphertext_modulus());
                    keyswitch_lwe_ciphertext(ksk, &ct, &mut out);
                    out
                });
                Keyswitched::U64(small.collect(), &ap.bootstrapping_key)
            }
            AtomicPatternServerKey::KeySwitch32(ap) => {
                let ksk = &ap.key_switching_key;
                let small = ciphertexts.map(|ct| {
                    let mut out =
                        LweCiphertext::new(0u32, ksk.output_lwe_size(), ksk.ciphertext_modulus());
                    keyswitch_lwe_ciphertext_with_scalar_change(ksk, &ct, &mut out);
                    out
                });
                Keyswitched::U32(small.collect(), &ap.bootstrapping_key)
            }
            AtomicPatternServerKey::Dynamic(_) => {
                unreachable!("HEXray's parameter sets use the standard and KS32 atomic patterns")
            }
        }
    }

    /// The lookup table whose box `p` (one per position, N in the half torus) holds
    /// `table[p]`, a torus value.
    ///
    /// # Panics
    /// When `table` does not have one entry per position of the key's polynomial size: the
    /// compiler builds tables for the model's parameter set, which the key was checked against.
    pub fn lookup_table(&self, table: &[u64]) -> LookupTable {
        let set = self.parameter_set();
        let n = set.polynomial_size();
        assert_eq!(
            table.len(),
            n.0,
            "a table has one entry per position of the half torus"
        );
        LookupTable(LookupTableOwned {
            acc: generate_programmable_bootstrap_glwe_lut(
                n,
                set.glwe_size(),
                n.0,
                CiphertextModulus::new_native(),
                1u64,
                |p: u64| table[p as usize],
            ),
            degree: Degree::new(self.tfhe().message_modulus.0 * self.tfhe().carry_modulus.0 - 1),
        })
    }

    /// Keyswitch + programmable bootstrap of one phase through `table`, by TFHE-rs's own
    /// `apply_lookup_table_assign`: the reference [`ServerKey::bootstrap_batch`] is held to.
    ///
    /// ```
    /// # use hexray_crypto::{ClientKey, ParameterSet};
    /// # let set = ParameterSet::Ks32;
    /// # let (model, circuit) = hexray_model::testing::tiny_model_with(set.fhe_parameters());
    /// # let spec = hexray_model::ClientSpec::of(&model, &circuit);
    /// let (client, server) = ClientKey::generate_deterministic(set, 1);
    /// let server = server.decompress();
    /// // 16 pixels 0, 1, 2, …, each encrypted as q·2^32 under the big key.
    /// let pixels = ndarray::Array3::from_shape_fn((1, 4, 4), |(_, y, x)| (4 * y + x) as i64);
    /// let encrypted = client.encrypt(&spec, pixels.view()).unwrap().expand();
    /// // A table that sends every position to 5·2^58 (a logit of 5 in the bundled unit), read
    /// // at a quarter of the torus: in the positive half, whatever the noise.
    /// let positions = set.polynomial_size().0;
    /// let five = server.lookup_table(&vec![5 << 58; positions]);
    /// let out = server.bootstrap(encrypted.dot_product([(9, 1)], 1 << 62), &five);
    /// let phase = client.decrypt_phases(&hexray_crypto::lwe::Ciphertexts::concat(vec![out]))[0];
    /// assert_eq!((phase as f64 / 2f64.powi(58)).round(), 5.0);
    /// ```
    pub fn bootstrap(&self, phase: Ciphertext, table: &LookupTable) -> Ciphertext {
        let mut ct = tfhe::shortint::Ciphertext::new(
            phase.0,
            Degree::new(0),
            NoiseLevel::NOMINAL,
            self.tfhe().message_modulus,
            self.tfhe().carry_modulus,
            self.parameter_set().tfhe().atomic_pattern(),
        );
        self.tfhe().apply_lookup_table_assign(&mut ct, &table.0);
        Ciphertext(ct.ct)
    }

    /// Bootstraps `phases[i]` through `tables[i]`, walking the bootstrapping key once for the
    /// whole batch; bit for bit what [`ServerKey::bootstrap`] gives each.
    ///
    /// ```
    /// # use hexray_crypto::{ClientKey, ParameterSet};
    /// # let set = ParameterSet::Ks32;
    /// # let (model, circuit) = hexray_model::testing::tiny_model_with(set.fhe_parameters());
    /// # let spec = hexray_model::ClientSpec::of(&model, &circuit);
    /// let (client, server) = ClientKey::generate_deterministic(set, 1);
    /// let server = server.decompress();
    /// // 16 pixels 0, 1, 2, …, each encrypted as q·2^32 under the big key.
    /// let pixels = ndarray::Array3::from_shape_fn((1, 4, 4), |(_, y, x)| (4 * y + x) as i64);
    /// let encrypted = client.encrypt(&spec, pixels.view()).unwrap().expand();
    /// let positions = set.polynomial_size().0;
    /// let phases: Vec<_> = (0..3).map(|i| encrypted.dot_product([(i, 1)], 1 << 62)).collect();
    /// let tables: Vec<_> = (1..4)
    ///     .map(|k: u64| server.lookup_table(&vec![k << 58; positions]))
    ///     .collect();
    /// let batched = server.bootstrap_batch(&phases, &tables);
    /// for ((phase, table), batched) in phases.into_iter().zip(&tables).zip(batched) {
    ///     assert_eq!(server.bootstrap(phase, table), batched);
    /// }
    /// ```
    ///
    /// # Panics
    /// When there is not one table per phase.
    pub fn bootstrap_batch(
        &self,
        phases: &[Ciphertext],
        tables: &[LookupTable],
    ) -> Vec<Ciphertext> {
        assert_eq!(phases.len(), tables.len(), "one table per ciphertext");
        match self.keyswitch(phases.iter().map(|phase| phase.0.as_view())) {
            Keyswitched::U64(small, key) => blind_rotate(key, small, tables),
            Keyswitched::U32(small, key) => blind_rotate(key, small, tables),
        }
    }
}

/// Modulus switch, batched blind rotation and sample extraction.
fn blind_rotate<Scalar>(
    bootstrapping_key: &ShortintBootstrappingKey<Scalar>,
    keyswitched: Vec<LweCiphertextOwned<Scalar>>,
    tables: &[LookupTable],
) -> Vec<Ciphertext>
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
        accumulator.as_mut().copy_from_slice(table.0.acc.as_ref());
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
            Ciphertext(out)
        })
        .collect()
}
