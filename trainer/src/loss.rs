//! Knowledge distillation (Hinton et al.), as both papers HEXray follows (Baruch et al. and Zhang
//! et al., see `activation`) train their students:
//! `α·T²·KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − α)·CE(student, labels)`.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

/// The distillation loss's two settings.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Distillation {
    /// Softmax temperature T: above 1 it exposes the teacher's relative class scores.
    pub temperature: f64,
    /// Weight α of the distillation term; 0 trains on the labels alone.
    pub alpha: f64,
}

impl Distillation {
    /// The batch-mean loss for `[batch, classes]` logits and `[batch]` class labels.
    pub fn loss(
        &self,
        student: Tensor<2>,
        teacher: Tensor<2>,
        labels: Tensor<1, Int>,
    ) -> Tensor<1> {
        let t = self.temperature;
        let log_student = log_softmax(student.clone() / t, 1);
        let log_teacher = log_softmax(teacher.detach() / t, 1);
        let kl = (log_teacher.clone().exp() * (log_teacher - log_student))
            .sum_dim(1)
            .mean();
        kl * (self.alpha * t * t) + cross_entropy(student, labels) * (1.0 - self.alpha)
    }
}

/// Mean cross-entropy of `[batch, classes]` logits against `[batch]` class labels.
pub fn cross_entropy(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let picked = log_softmax(logits, 1).gather(1, labels.unsqueeze_dim::<2>(1));
    picked.mean().neg()
}
