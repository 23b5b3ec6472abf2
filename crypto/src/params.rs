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

/// Mantissa bits of the f64 FFT used by the bootstrap, as in TFHE-rs's noise checks.
const FFT_MANTISSA_BITS: f64 = 53.0;

impl ParameterSet {
    pub const ALL: [ParameterSet; 2] = [ParameterSet::Ks64, ParameterSet::Ks32];

    pub fn name(self) -> &'static str {
        match self {
            ParameterSet::Ks64 => "PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128",
            ParameterSet::Ks32 => "PARAM_MESSAGE_2_CARRY_2_KS32_PBS_TUNIFORM_2M128",
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

    pub fn tfhe(self) -> AtomicPatternParameters {
        match self {
            ParameterSet::Ks64 => PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128.into(),
            ParameterSet::Ks32 => PARAM_MESSAGE_2_CARRY_2_KS32_PBS_TUNIFORM_2M128.into(),
        }
    }

    /// LWE dimension of the ciphertexts clients encrypt and the server computes on.
    pub fn big_lwe_dimension(self) -> LweDimension {
        let (glwe, n) = self.glwe();
        glwe.to_equivalent_lwe_dimension(n)
    }

    pub fn polynomial_size(self) -> PolynomialSize {
        self.glwe().1
    }

    /// GLWE size of the bootstrap accumulator (lookup table).
    pub fn glwe_size(self) -> GlweSize {
        self.glwe().0.to_glwe_size()
    }

    fn glwe(self) -> (GlweDimension, PolynomialSize) {
        match self {
            ParameterSet::Ks64 => {
                let p = classic();
                (p.glwe_dimension, p.polynomial_size)
            }
            ParameterSet::Ks32 => {
                let p = ks32();
                (p.glwe_dimension, p.polynomial_size)
            }
        }
    }

    /// Noise that client encryptions carry (the GLWE noise of the big key).
    pub fn encryption_noise(self) -> DynamicDistribution<u64> {
        match self {
            ParameterSet::Ks64 => classic().glwe_noise_distribution,
            ParameterSet::Ks32 => ks32().glwe_noise_distribution,
        }
    }

    /// The numbers the model compiler needs, from TFHE-rs's noise formulas.
    pub fn fhe_parameters(self) -> FheParameters {
        let torus = 2f64.powi(64);
        let (glwe_dimension, polynomial_size, lwe_dimension, pbs, ks, post_ks_modulus, ms) =
            match self {
                ParameterSet::Ks64 => {
                    let p = classic();
                    let ks = (p.ks_base_log, p.ks_level);
                    let pbs = (p.pbs_base_log, p.pbs_level);
                    (
                        p.glwe_dimension,
                        p.polynomial_size,
                        p.lwe_dimension,
                        pbs,
                        ks,
                        torus,
                        p.modulus_switch_noise_reduction_params,
                    )
                }
                ParameterSet::Ks32 => {
                    let p = ks32();
                    let ks = (p.ks_base_log, p.ks_level);
                    let pbs = (p.pbs_base_log, p.pbs_level);
                    (
                        p.glwe_dimension,
                        p.polynomial_size,
                        p.lwe_dimension,
                        pbs,
                        ks,
                        2f64.powi(32),
                        p.modulus_switch_noise_reduction_params,
                    )
                }
            };
        assert_eq!(
            ms,
            ModulusSwitchType::CenteredMeanNoiseReduction,
            "the noise model below assumes TFHE-rs's centred modulus switch"
        );
        let big = glwe_dimension.to_equivalent_lwe_dimension(polynomial_size);
        let fresh_variance = match self.encryption_noise() {
            DynamicDistribution::TUniform(t) => t.variance(torus).0,
            DynamicDistribution::Gaussian(g) => g.std * g.std,
        };
        let bootstrap = pbs_variance_132_bits_security_tuniform_fft_mul(
            lwe_dimension,
            glwe_dimension,
            polynomial_size,
            pbs.0,
            pbs.1,
            FFT_MANTISSA_BITS,
            torus,
        );
        let keyswitch = keyswitch_additive_variance_132_bits_security_tuniform(
            big,
            lwe_dimension,
            ks.0,
            ks.1,
            torus,
            post_ks_modulus,
        );
        let modulus_switch = centered_binary_shifted_modulus_switch_additive_variance(
            lwe_dimension,
            post_ks_modulus,
            2.0 * polynomial_size.0 as f64,
        );
        FheParameters {
            name: self.name().to_owned(),
            polynomial_size: polynomial_size.0 as u32,
            fresh_variance,
            bootstrap_variance: bootstrap.0,
            keyswitch_variance: keyswitch.0,
            modulus_switch_variance: modulus_switch.0,
        }
    }
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
