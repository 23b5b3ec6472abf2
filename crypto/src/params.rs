//! The TFHE parameter sets HEXray supports, and their noise.
//!
//! Both are TFHE-rs's standard 2_2 sets at a 2^-128 failure probability; HEXray uses only
//! published parameters, never custom security settings. They share the client-side LWE
//! dimension (2048, the GLWE key seen as an LWE key) and the bootstrap (n = 918, N = 2048); the
//! KS32 variant keyswitches to a 32-bit modulus, which halves the keyswitch's memory traffic.

use hexray_model::FheParameters;
use tfhe::core_crypto::commons::noise_formulas::centered_mean_shifted_modulus_switch::centered_binary_shifted_modulus_switch_additive_variance;
use tfhe::core_crypto::commons::noise_formulas::lwe_keyswitch::keyswitch_additive_variance_132_bits_security_tuniform;
use tfhe::core_crypto::commons::noise_formulas::lwe_programmable_bootstrap::pbs_variance_132_bits_security_tuniform_fft_mul;
use tfhe::core_crypto::prelude::*;
use tfhe::shortint::parameters::{
    KeySwitch32PBSParameters, ModulusSwitchType, PARAM_MESSAGE_2_CARRY_2_KS32_PBS_TUNIFORM_2M128,
    PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
};
use tfhe::shortint::{AtomicPatternParameters, ClassicPBSParameters};

use crate::error::CryptoError;

/// A supported parameter set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParameterSet {
    /// `PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128`: 64-bit keyswitch, then bootstrap.
    Ks64,
    /// `PARAM_MESSAGE_2_CARRY_2_KS32_PBS_TUNIFORM_2M128`: keyswitch to 32 bits, then bootstrap.
    Ks32,
}

/// The set HEXray compiles models for (chosen by the engine benchmark; see the README).
pub const DEFAULT_PARAMETER_SET: ParameterSet = ParameterSet::Ks32;

/// Builds a [`Spec`] from either of TFHE-rs's parameter structs.
macro_rules! spec {
    ($params:expr, $post_keyswitch_modulus:expr) => {{
        let p = $params;
        Spec {
            lwe_dimension: p.lwe_dimension,
            glwe_dimension: p.glwe_dimension,
            polynomial_size: p.polynomial_size,
            pbs_base_log: p.pbs_base_log,
            pbs_level: p.pbs_level,
            ks_base_log: p.ks_base_log,
            ks_level: p.ks_level,
            glwe_noise: p.glwe_noise_distribution,
            modulus_switch: p.modulus_switch_noise_reduction_params,
            post_keyswitch_modulus: $post_keyswitch_modulus,
        }
    }};
}

/// Mantissa bits of the f64 FFT used by the bootstrap, as in TFHE-rs's noise checks.
const FFT_MANTISSA_BITS: f64 = 53.0;

impl ParameterSet {
    /// Every supported set, in the order loaders try them.
    pub const ALL: [ParameterSet; 2] = [ParameterSet::Ks64, ParameterSet::Ks32];

    /// TFHE-rs's name for the set, as model files and serialized blobs record it.
    pub fn name(self) -> &'static str {
        match self {
            ParameterSet::Ks64 => "PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128",
            ParameterSet::Ks32 => "PARAM_MESSAGE_2_CARRY_2_KS32_PBS_TUNIFORM_2M128",
        }
    }

    /// The parameter-set check on a name read from outside (a model, a client spec, a
    /// serialized key or ciphertext): `found` must name this set. With
    /// [`ParameterSet::require_set`], for sets already read, it is every such refusal in
    /// HEXray, in the client, the engine or the API: the same [`CryptoError::ParameterMismatch`].
    ///
    /// ```
    /// use hexray_crypto::{CryptoError, ParameterSet};
    /// let set = ParameterSet::Ks32;
    /// assert!(set.require("server key", set.name()).is_ok());
    /// let refused = set.require("server key", ParameterSet::Ks64.name());
    /// assert!(matches!(refused, Err(CryptoError::ParameterMismatch { what: "server key", .. })));
    /// ```
    pub fn require(self, what: &'static str, found: &str) -> Result<(), CryptoError> {
        if self.name() == found {
            Ok(())
        } else {
            Err(self.mismatch(what, found))
        }
    }

    /// [`ParameterSet::require`] for a set already read (a checked key's or image's): compared
    /// as a value, with the same refusal.
    ///
    /// ```
    /// use hexray_crypto::ParameterSet;
    /// assert!(ParameterSet::Ks32.require_set("server key", ParameterSet::Ks32).is_ok());
    /// assert!(ParameterSet::Ks32.require_set("server key", ParameterSet::Ks64).is_err());
    /// ```
    pub fn require_set(self, what: &'static str, found: ParameterSet) -> Result<(), CryptoError> {
        if self == found {
            Ok(())
        } else {
            Err(self.mismatch(what, found.name()))
        }
    }

    fn mismatch(self, what: &'static str, found: &str) -> CryptoError {
        CryptoError::ParameterMismatch {
            what,
            expected: self.name().into(),
            found: found.chars().take(80).collect(),
        }
    }

    /// The set a model was compiled for: its name must be a supported set's, and its noise
    /// figures exactly the ones TFHE-rs's formulas give for that set, or the compiler's
    /// margins would be sized for noise other than the real one.
    pub fn of_model(fhe: &FheParameters) -> Result<Self, CryptoError> {
        let set = Self::from_name(&fhe.name)?;
        if *fhe == set.fhe_parameters() {
            Ok(set)
        } else {
            Err(CryptoError::ParameterMismatch {
                what: "the model",
                expected: format!("{} with TFHE-rs's noise figures", set.name()),
                found: format!("{} with edited noise figures", set.name()),
            })
        }
    }

    /// The set with this name.
    pub fn from_name(name: &str) -> Result<Self, CryptoError> {
        Self::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| CryptoError::ParameterMismatch {
                what: "the model",
                expected: Self::ALL.map(Self::name).join(" or "),
                found: name.chars().take(80).collect(),
            })
    }

    /// The set whose TFHE-rs parameters are exactly `params`.
    pub fn from_tfhe(params: AtomicPatternParameters) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.tfhe() == params)
    }

    /// The set's TFHE-rs parameters, to build keys with.
    pub fn tfhe(self) -> AtomicPatternParameters {
        match self {
            ParameterSet::Ks64 => PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128.into(),
            ParameterSet::Ks32 => PARAM_MESSAGE_2_CARRY_2_KS32_PBS_TUNIFORM_2M128.into(),
        }
    }

    /// The bootstrap's input LWE dimension n: the small key, which compressed outputs are
    /// encrypted under.
    pub fn small_lwe_dimension(self) -> LweDimension {
        self.spec().lwe_dimension
    }

    /// LWE dimension of the ciphertexts clients encrypt and the server computes on: k·N, the
    /// GLWE key seen as an LWE key (2048).
    pub fn big_lwe_dimension(self) -> LweDimension {
        let spec = self.spec();
        spec.glwe_dimension
            .to_equivalent_lwe_dimension(spec.polynomial_size)
    }

    /// Polynomial size N of the bootstrap's GLWE ciphertexts (2048), which sets the lookup
    /// table's resolution.
    pub fn polynomial_size(self) -> PolynomialSize {
        self.spec().polynomial_size
    }

    /// GLWE size of the bootstrap accumulator (lookup table).
    pub fn glwe_size(self) -> GlweSize {
        self.spec().glwe_dimension.to_glwe_size()
    }

    /// Bytes an expanded server key occupies, which bounds a server's key cache: the Fourier
    /// bootstrapping key (n·l·(k+1)² polynomials of N/2 complex f64) plus the keyswitching key
    /// (kN·l_ks ciphertexts of n+1 words of the keyswitch's output width).
    pub fn server_key_memory_bytes(self) -> usize {
        let s = self.spec();
        let k1 = s.glwe_dimension.to_glwe_size().0;
        let n = s.lwe_dimension.0;
        let bootstrapping = n * s.pbs_level.0 * k1 * k1 * s.polynomial_size.0 / 2 * 16;
        let word = (s.post_keyswitch_modulus.log2() / 8.0).ceil() as usize;
        let keyswitching = self.big_lwe_dimension().0 * s.ks_level.0 * (n + 1) * word;
        bootstrapping + keyswitching
    }

    /// Noise that client encryptions carry (the GLWE noise of the big key).
    pub fn encryption_noise(self) -> DynamicDistribution<u64> {
        self.spec().glwe_noise
    }

    /// The numbers the model compiler needs, from TFHE-rs's noise formulas.
    pub fn fhe_parameters(self) -> FheParameters {
        let torus = 2f64.powi(64);
        let spec = self.spec();
        assert_eq!(
            spec.modulus_switch,
            ModulusSwitchType::CenteredMeanNoiseReduction,
            "the noise model below assumes TFHE-rs's centred modulus switch"
        );
        let fresh_variance = match spec.glwe_noise {
            DynamicDistribution::TUniform(t) => t.variance(torus).0,
            DynamicDistribution::Gaussian(g) => g.std * g.std,
        };
        let bootstrap = pbs_variance_132_bits_security_tuniform_fft_mul(
            spec.lwe_dimension,
            spec.glwe_dimension,
            spec.polynomial_size,
            spec.pbs_base_log,
            spec.pbs_level,
            FFT_MANTISSA_BITS,
            torus,
        );
        let keyswitch = keyswitch_additive_variance_132_bits_security_tuniform(
            self.big_lwe_dimension(),
            spec.lwe_dimension,
            spec.ks_base_log,
            spec.ks_level,
            torus,
            spec.post_keyswitch_modulus,
        );
        let modulus_switch = centered_binary_shifted_modulus_switch_additive_variance(
            spec.lwe_dimension,
            spec.post_keyswitch_modulus,
            2.0 * spec.polynomial_size.0 as f64,
        );
        FheParameters {
            name: self.name().to_owned(),
            polynomial_size: spec.polynomial_size.0 as u32,
            fresh_variance,
            bootstrap_variance: bootstrap.0,
            keyswitch_variance: keyswitch.0,
            modulus_switch_variance: modulus_switch.0,
        }
    }

    fn spec(self) -> Spec {
        match self {
            ParameterSet::Ks64 => spec!(classic(), 2f64.powi(64)),
            ParameterSet::Ks32 => spec!(ks32(), 2f64.powi(32)),
        }
    }
}

/// The fields HEXray reads from a parameter set. TFHE-rs has one struct per atomic pattern,
/// with these fields in common.
struct Spec {
    lwe_dimension: LweDimension,
    glwe_dimension: GlweDimension,
    polynomial_size: PolynomialSize,
    pbs_base_log: DecompositionBaseLog,
    pbs_level: DecompositionLevelCount,
    ks_base_log: DecompositionBaseLog,
    ks_level: DecompositionLevelCount,
    glwe_noise: DynamicDistribution<u64>,
    modulus_switch: ModulusSwitchType,
    /// Modulus of the keyswitch's output, which the modulus switch starts from.
    post_keyswitch_modulus: f64,
}

fn classic() -> ClassicPBSParameters {
    PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128
}

fn ks32() -> KeySwitch32PBSParameters {
    PARAM_MESSAGE_2_CARRY_2_KS32_PBS_TUNIFORM_2M128
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modulus_switch_dominates_and_matches_the_textbook_figure() {
        for set in ParameterSet::ALL {
            let p = set.fhe_parameters();
            // Centred modulus switch over n = 918: n/48 positions² of 1/4096 of the torus.
            let positions = p.modulus_switch_variance.sqrt() * 4096.0;
            assert!(
                (positions - (918.0f64 / 48.0).sqrt()).abs() < 0.05,
                "{positions}"
            );
            assert!(p.keyswitch_variance < p.modulus_switch_variance);
            assert!(
                p.fresh_variance < 1e-20 && p.bootstrap_variance < p.keyswitch_variance / 100.0
            );
            assert_eq!(ParameterSet::from_name(set.name()).unwrap(), set);
            assert_eq!(ParameterSet::from_tfhe(set.tfhe()), Some(set));
        }
        assert!(ParameterSet::from_name("PARAM_CUSTOM").is_err());
    }
}
